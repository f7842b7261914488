"""The ingress's handlers, one module per route group; ``ingress/app.py`` holds the table
of paths."""
