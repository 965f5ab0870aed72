"""rolegraph.trainers"""
