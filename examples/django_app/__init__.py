"""A small Django project, audited through audit_mw.integrations.django."""
