"""Pictures of results for people: boxes and labels drawn on images (visualize.py), the HTML gallery
(gallery.py)."""
