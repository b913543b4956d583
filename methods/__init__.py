"""Method plugins: one file per method, one Method subclass per file.

Every module here (except names starting with ``_``) is imported by the registry and
its named Method subclasses become available by name.
"""
