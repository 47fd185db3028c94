"""LIS destinations: how results leave labbridge."""
