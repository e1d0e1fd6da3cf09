"""Kubetune package."""
