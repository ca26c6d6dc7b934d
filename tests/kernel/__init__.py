"""kernel tests"""
