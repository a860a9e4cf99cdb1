"""The privilege model and the two sides of it: provisioning (make the catalog match the
topology) and verify (read the catalog and compare).  Both import :mod:`.model`; verify
never imports provisioning.  :mod:`.sqlserver` renders the same model as T-SQL.
"""
