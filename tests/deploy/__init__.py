"""deploy tests"""
