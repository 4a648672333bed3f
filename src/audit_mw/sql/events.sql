-- Statements used by the application-event writers (audit_mw.events).

-- name: log_event
-- One application event through the SECURITY DEFINER function (the application role has no
-- INSERT on audit.events). Idempotent on event_id; returns the stored row either way.
SELECT stored_id, stored_at, created
FROM audit.log_event(
    p_event_id      => %(event_id)s::uuid,
    p_kind          => %(kind)s,
    p_action        => %(action)s,
    p_success       => %(success)s,
    p_reason        => %(reason)s,
    p_app_user_id   => %(app_user_id)s,
    p_client_ip     => %(client_ip)s,
    p_request_id    => %(request_id)s,
    p_user_agent    => %(user_agent)s,
    p_context_extra => %(context_extra)s::jsonb,
    p_resource_type => %(resource_type)s,
    p_resource_id   => %(resource_id)s,
    p_metadata      => %(metadata)s::jsonb
);
