-- Supabase-style migration (as `supabase migration new` files are written): a table with
-- row level security and policies for Supabase's API roles, grants to those roles, and
-- functions with a pinned search_path.  Written for edulink-db's lint corpus.

create extension if not exists pgcrypto with schema extensions;

create table notification_schema.notification (
    id uuid primary key default extensions.gen_random_uuid(),
    recipient_id uuid not null,
    channel text not null check (channel in ('email', 'sms', 'push')),
    subject text not null,
    body text not null default '',
    read_at timestamptz,
    created_at timestamptz not null default now()
);
comment on table notification_schema.notification is 'One message to one user';

create index notification_recipient_created
    on notification_schema.notification (recipient_id, created_at desc);

alter table notification_schema.notification enable row level security;

create policy "recipients read their notifications"
    on notification_schema.notification for select
    to authenticated
    using (recipient_id = (select auth.uid()));

create policy "recipients mark their notifications read"
    on notification_schema.notification for update
    to authenticated
    using (recipient_id = (select auth.uid()))
    with check (recipient_id = (select auth.uid()));

revoke all on notification_schema.notification from public;
revoke all on notification_schema.notification from anon;
grant select, update (read_at) on notification_schema.notification to authenticated;

-- Functions: SECURITY INVOKER by default; a definer pins its search_path.
create function notification_schema.unread_count()
returns bigint
language sql
stable
set search_path = ''
as $$
    select count(*) from notification_schema.notification
    where recipient_id = (select auth.uid()) and read_at is null;
$$;

create function notification_schema.mark_all_read()
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
    update notification_schema.notification
    set read_at = now()
    where recipient_id = (select auth.uid()) and read_at is null;
end;
$$;

revoke execute on function notification_schema.mark_all_read() from public;
revoke execute on function notification_schema.mark_all_read() from anon;
grant execute on function notification_schema.mark_all_read() to authenticated;

alter default privileges in schema notification_schema
    revoke execute on functions from public;
