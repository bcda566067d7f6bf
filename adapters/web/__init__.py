"""``jobworker web``'s pages: a small server-rendered console (WSGI, Jinja templates).

No JavaScript build and nothing loaded from elsewhere: one stylesheet and one small
script, both served from here, so it works with no internet.
"""
