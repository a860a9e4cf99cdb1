-- Supabase-style migration: a trigger that keeps a timestamp, a domain, a materialized
-- view with its index, and a table created under a working name and renamed, all in one
-- file (objects this file creates are used by no other session yet).  Written for
-- edulink-db's lint corpus.

create domain notification_schema.digest_frequency as text
    check (value in ('never', 'daily', 'weekly'));

create table notification_schema.preference_draft (
    user_id uuid primary key,
    frequency notification_schema.digest_frequency not null default 'daily',
    updated_at timestamptz not null default now()
);
alter table notification_schema.preference_draft rename to preference;
alter table notification_schema.preference
    add constraint preference_frequency_set check (frequency is not null);
create index preference_frequency on notification_schema.preference (frequency);

create function notification_schema.touch_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.updated_at := now();
    return new;
end;
$$;

create trigger preference_touch
    before update on notification_schema.preference
    for each row execute function notification_schema.touch_updated_at();

alter table notification_schema.preference enable row level security;
create policy "users manage their preference"
    on notification_schema.preference for all
    to authenticated
    using (user_id = (select auth.uid()))
    with check (user_id = (select auth.uid()));
grant select, insert, update on notification_schema.preference to authenticated;

create materialized view notification_schema.daily_counts as
    select recipient_id, date_trunc('day', created_at) as day, count(*) as sent
    from notification_schema.notification
    group by 1, 2
with no data;
create unique index daily_counts_key on notification_schema.daily_counts (recipient_id, day);
revoke all on notification_schema.daily_counts from public, anon, authenticated;
