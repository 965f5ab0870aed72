"""rolegraph.agents"""
