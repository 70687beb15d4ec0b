"""dmlight"""
