"""Method plugins: one file per method (a variant may share its file, e.g. mrgan.py holds
`mrgan` and `mdgan`).

Every module here (except names starting with ``_``) is imported by the registry and
its named Method subclasses become available by name.
"""
