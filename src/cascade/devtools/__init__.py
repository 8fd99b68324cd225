"""Tools for trying Cascade on one machine (``cascade dev ...``); nothing here runs in the
service itself."""
