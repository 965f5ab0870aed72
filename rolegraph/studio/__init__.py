"""rolegraph studio: a local web app to browse, debug, fork and replay generation traces."""
