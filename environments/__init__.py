"""rolegraph.environments"""
