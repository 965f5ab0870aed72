"""The PromptCoT problem-synthesis graph."""
