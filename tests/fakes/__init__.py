"""Local fake servers of the social networks' HTTP APIs, for tests through the real clients."""
