"""Destinations: file, Meta Custom Audiences, Google Ads Customer Match, and their sandboxes."""
