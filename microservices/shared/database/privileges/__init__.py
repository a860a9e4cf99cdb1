"""The privilege model and the two sides of it: provisioning (make the catalog match the
topology: roles, schemas, grants, script; run by provisioning) and verify (catalog,
expected, compare, report; run by verify).  Both import :mod:`.model`; the verify side
never imports the provisioning side.  :mod:`.sqlserver` renders the same model as T-SQL.
"""
