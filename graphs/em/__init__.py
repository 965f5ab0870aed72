"""PromptCoT 2.0's EM loop as graphs on the runtime (driven by rolegraph.trainers.em)."""
