"""The admin REST API (`/admin/v1`): tenants, keys, policies, tiers, usage and audit.

`router.build_admin_router` assembles it; `changes` holds the audited mutations that the
API and the `voxgate` CLI share. See docs/admin-api.md.
"""
