-- edulink-db: SQL Server schema and role setup.
-- GENERATED from the topology by `edulink-db sql --dialect sqlserver`; do not edit.
-- Services: auth (auth_schema), user (user_schema), institution (institution_schema), notification (notification_schema), application (application_schema), internship (internship_schema)
--
-- Run with sqlcmd, passwords as variables (never written here):
--   sqlcmd -S HOST -d DATABASE -i sqlserver_schema_setup.sql -v AUTH_SERVICE_PASSWORD=... USER_SERVICE_PASSWORD=... INSTITUTION_SERVICE_PASSWORD=... NOTIFICATION_SERVICE_PASSWORD=... APPLICATION_SERVICE_PASSWORD=... INTERNSHIP_SERVICE_PASSWORD=...
-- Idempotent. NOT TESTED AGAINST A REAL SQL SERVER: see DATABASE_COMPATIBILITY.md.

-- Run with sqlcmd so that passwords come from -v variables.
SET NOCOUNT ON;
GO

-- Owner role auth_service_owner: owns a schema; no login.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'auth_service_owner')
BEGIN
    EXEC sys.sp_executesql N'CREATE ROLE [auth_service_owner]';
END
GO

-- Owner role user_service_owner: owns a schema; no login.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'user_service_owner')
BEGIN
    EXEC sys.sp_executesql N'CREATE ROLE [user_service_owner]';
END
GO

-- Owner role institution_service_owner: owns a schema; no login.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'institution_service_owner')
BEGIN
    EXEC sys.sp_executesql N'CREATE ROLE [institution_service_owner]';
END
GO

-- Owner role notification_service_owner: owns a schema; no login.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'notification_service_owner')
BEGIN
    EXEC sys.sp_executesql N'CREATE ROLE [notification_service_owner]';
END
GO

-- Owner role application_service_owner: owns a schema; no login.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'application_service_owner')
BEGIN
    EXEC sys.sp_executesql N'CREATE ROLE [application_service_owner]';
END
GO

-- Owner role internship_service_owner: owns a schema; no login.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'internship_service_owner')
BEGIN
    EXEC sys.sp_executesql N'CREATE ROLE [internship_service_owner]';
END
GO

-- Owner role shared_schema_owner: owns a schema; no login.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'shared_schema_owner')
BEGIN
    EXEC sys.sp_executesql N'CREATE ROLE [shared_schema_owner]';
END
GO

-- Login of service auth (server level).
IF NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = N'auth_service_role')
BEGIN
    DECLARE @password NVARCHAR(128) = N'$(AUTH_SERVICE_PASSWORD)';
    IF @password = N'$' + N'(AUTH_SERVICE_PASSWORD)' OR @password = N'' RAISERROR(N'Set the password of auth_service_role: sqlcmd -v AUTH_SERVICE_PASSWORD=...', 16, 1);
    DECLARE @sql NVARCHAR(MAX) = N'CREATE LOGIN [auth_service_role] WITH PASSWORD = ' + QUOTENAME(@password, N'''') + N', CHECK_POLICY = ON';
    EXEC sys.sp_executesql @sql;
END
GO

-- Login of service user (server level).
IF NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = N'user_service_role')
BEGIN
    DECLARE @password NVARCHAR(128) = N'$(USER_SERVICE_PASSWORD)';
    IF @password = N'$' + N'(USER_SERVICE_PASSWORD)' OR @password = N'' RAISERROR(N'Set the password of user_service_role: sqlcmd -v USER_SERVICE_PASSWORD=...', 16, 1);
    DECLARE @sql NVARCHAR(MAX) = N'CREATE LOGIN [user_service_role] WITH PASSWORD = ' + QUOTENAME(@password, N'''') + N', CHECK_POLICY = ON';
    EXEC sys.sp_executesql @sql;
END
GO

-- Login of service institution (server level).
IF NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = N'institution_service_role')
BEGIN
    DECLARE @password NVARCHAR(128) = N'$(INSTITUTION_SERVICE_PASSWORD)';
    IF @password = N'$' + N'(INSTITUTION_SERVICE_PASSWORD)' OR @password = N'' RAISERROR(N'Set the password of institution_service_role: sqlcmd -v INSTITUTION_SERVICE_PASSWORD=...', 16, 1);
    DECLARE @sql NVARCHAR(MAX) = N'CREATE LOGIN [institution_service_role] WITH PASSWORD = ' + QUOTENAME(@password, N'''') + N', CHECK_POLICY = ON';
    EXEC sys.sp_executesql @sql;
END
GO

-- Login of service notification (server level).
IF NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = N'notification_service_role')
BEGIN
    DECLARE @password NVARCHAR(128) = N'$(NOTIFICATION_SERVICE_PASSWORD)';
    IF @password = N'$' + N'(NOTIFICATION_SERVICE_PASSWORD)' OR @password = N'' RAISERROR(N'Set the password of notification_service_role: sqlcmd -v NOTIFICATION_SERVICE_PASSWORD=...', 16, 1);
    DECLARE @sql NVARCHAR(MAX) = N'CREATE LOGIN [notification_service_role] WITH PASSWORD = ' + QUOTENAME(@password, N'''') + N', CHECK_POLICY = ON';
    EXEC sys.sp_executesql @sql;
END
GO

-- Login of service application (server level).
IF NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = N'application_service_role')
BEGIN
    DECLARE @password NVARCHAR(128) = N'$(APPLICATION_SERVICE_PASSWORD)';
    IF @password = N'$' + N'(APPLICATION_SERVICE_PASSWORD)' OR @password = N'' RAISERROR(N'Set the password of application_service_role: sqlcmd -v APPLICATION_SERVICE_PASSWORD=...', 16, 1);
    DECLARE @sql NVARCHAR(MAX) = N'CREATE LOGIN [application_service_role] WITH PASSWORD = ' + QUOTENAME(@password, N'''') + N', CHECK_POLICY = ON';
    EXEC sys.sp_executesql @sql;
END
GO

-- Login of service internship (server level).
IF NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = N'internship_service_role')
BEGIN
    DECLARE @password NVARCHAR(128) = N'$(INTERNSHIP_SERVICE_PASSWORD)';
    IF @password = N'$' + N'(INTERNSHIP_SERVICE_PASSWORD)' OR @password = N'' RAISERROR(N'Set the password of internship_service_role: sqlcmd -v INTERNSHIP_SERVICE_PASSWORD=...', 16, 1);
    DECLARE @sql NVARCHAR(MAX) = N'CREATE LOGIN [internship_service_role] WITH PASSWORD = ' + QUOTENAME(@password, N'''') + N', CHECK_POLICY = ON';
    EXEC sys.sp_executesql @sql;
END
GO

-- Schema auth_schema, owned by auth_service_owner.
IF SCHEMA_ID(N'auth_schema') IS NULL
BEGIN
    EXEC sys.sp_executesql N'CREATE SCHEMA [auth_schema] AUTHORIZATION [auth_service_owner]';
END
GO

-- Schema user_schema, owned by user_service_owner.
IF SCHEMA_ID(N'user_schema') IS NULL
BEGIN
    EXEC sys.sp_executesql N'CREATE SCHEMA [user_schema] AUTHORIZATION [user_service_owner]';
END
GO

-- Schema institution_schema, owned by institution_service_owner.
IF SCHEMA_ID(N'institution_schema') IS NULL
BEGIN
    EXEC sys.sp_executesql N'CREATE SCHEMA [institution_schema] AUTHORIZATION [institution_service_owner]';
END
GO

-- Schema notification_schema, owned by notification_service_owner.
IF SCHEMA_ID(N'notification_schema') IS NULL
BEGIN
    EXEC sys.sp_executesql N'CREATE SCHEMA [notification_schema] AUTHORIZATION [notification_service_owner]';
END
GO

-- Schema application_schema, owned by application_service_owner.
IF SCHEMA_ID(N'application_schema') IS NULL
BEGIN
    EXEC sys.sp_executesql N'CREATE SCHEMA [application_schema] AUTHORIZATION [application_service_owner]';
END
GO

-- Schema internship_schema, owned by internship_service_owner.
IF SCHEMA_ID(N'internship_schema') IS NULL
BEGIN
    EXEC sys.sp_executesql N'CREATE SCHEMA [internship_schema] AUTHORIZATION [internship_service_owner]';
END
GO

-- Schema shared_schema, owned by shared_schema_owner.
IF SCHEMA_ID(N'shared_schema') IS NULL
BEGIN
    EXEC sys.sp_executesql N'CREATE SCHEMA [shared_schema] AUTHORIZATION [shared_schema_owner]';
END
GO

-- Database user of auth: DEFAULT_SCHEMA is PostgreSQL's search_path.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'auth_service_role')
BEGIN
    EXEC sys.sp_executesql N'CREATE USER [auth_service_role] FOR LOGIN [auth_service_role] WITH DEFAULT_SCHEMA = [auth_schema]';
END
GO

-- auth_service_role: its own schema, the schemas it may read (none), and no DDL.
IF USER_ID(N'auth_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON SCHEMA::[auth_schema] TO [auth_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[auth_schema] TO [auth_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[user_schema] TO [auth_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[institution_schema] TO [auth_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[notification_schema] TO [auth_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[application_schema] TO [auth_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[internship_schema] TO [auth_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[shared_schema] TO [auth_service_role]';
    EXEC sys.sp_executesql N'DENY CREATE TABLE, CREATE VIEW, CREATE PROCEDURE, CREATE FUNCTION, CREATE SCHEMA TO [auth_service_role]';
END
GO

-- Database user of user: DEFAULT_SCHEMA is PostgreSQL's search_path.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'user_service_role')
BEGIN
    EXEC sys.sp_executesql N'CREATE USER [user_service_role] FOR LOGIN [user_service_role] WITH DEFAULT_SCHEMA = [user_schema]';
END
GO

-- user_service_role: its own schema, the schemas it may read (auth, institution), and no DDL.
IF USER_ID(N'user_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON SCHEMA::[user_schema] TO [user_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[auth_schema] FROM [user_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[institution_schema] FROM [user_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[auth_schema].[authentication_user] TO [user_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'email') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([email]) ON OBJECT::[auth_schema].[authentication_user] TO [user_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'is_active') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([is_active]) ON OBJECT::[auth_schema].[authentication_user] TO [user_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'is_staff') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([is_staff]) ON OBJECT::[auth_schema].[authentication_user] TO [user_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'last_login') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([last_login]) ON OBJECT::[auth_schema].[authentication_user] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[institution_schema].[institutions_institution] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'code') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([code]) ON OBJECT::[institution_schema].[institutions_institution] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([name]) ON OBJECT::[institution_schema].[institutions_institution] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'kind') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([kind]) ON OBJECT::[institution_schema].[institutions_institution] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'country') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([country]) ON OBJECT::[institution_schema].[institutions_institution] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'website') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([website]) ON OBJECT::[institution_schema].[institutions_institution] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'created_at') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([created_at]) ON OBJECT::[institution_schema].[institutions_institution] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[institution_schema].[institutions_program] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'institution_id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([institution_id]) ON OBJECT::[institution_schema].[institutions_program] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'code') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([code]) ON OBJECT::[institution_schema].[institutions_program] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([name]) ON OBJECT::[institution_schema].[institutions_program] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'level') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([level]) ON OBJECT::[institution_schema].[institutions_program] TO [user_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'duration_years') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([duration_years]) ON OBJECT::[institution_schema].[institutions_program] TO [user_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[auth_schema] TO [user_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[user_schema] TO [user_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[institution_schema] TO [user_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[notification_schema] TO [user_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[application_schema] TO [user_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[internship_schema] TO [user_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[shared_schema] TO [user_service_role]';
    EXEC sys.sp_executesql N'DENY CREATE TABLE, CREATE VIEW, CREATE PROCEDURE, CREATE FUNCTION, CREATE SCHEMA TO [user_service_role]';
END
GO

-- Database user of institution: DEFAULT_SCHEMA is PostgreSQL's search_path.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'institution_service_role')
BEGIN
    EXEC sys.sp_executesql N'CREATE USER [institution_service_role] FOR LOGIN [institution_service_role] WITH DEFAULT_SCHEMA = [institution_schema]';
END
GO

-- institution_service_role: its own schema, the schemas it may read (none), and no DDL.
IF USER_ID(N'institution_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON SCHEMA::[institution_schema] TO [institution_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[auth_schema] TO [institution_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[user_schema] TO [institution_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[institution_schema] TO [institution_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[notification_schema] TO [institution_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[application_schema] TO [institution_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[internship_schema] TO [institution_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[shared_schema] TO [institution_service_role]';
    EXEC sys.sp_executesql N'DENY CREATE TABLE, CREATE VIEW, CREATE PROCEDURE, CREATE FUNCTION, CREATE SCHEMA TO [institution_service_role]';
END
GO

-- Database user of notification: DEFAULT_SCHEMA is PostgreSQL's search_path.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'notification_service_role')
BEGIN
    EXEC sys.sp_executesql N'CREATE USER [notification_service_role] FOR LOGIN [notification_service_role] WITH DEFAULT_SCHEMA = [notification_schema]';
END
GO

-- notification_service_role: its own schema, the schemas it may read (auth, user, institution, application, internship), and no DDL.
IF USER_ID(N'notification_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON SCHEMA::[notification_schema] TO [notification_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[auth_schema] FROM [notification_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[user_schema] FROM [notification_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[institution_schema] FROM [notification_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[application_schema] FROM [notification_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[internship_schema] FROM [notification_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[auth_schema].[authentication_user] TO [notification_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'email') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([email]) ON OBJECT::[auth_schema].[authentication_user] TO [notification_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'is_active') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([is_active]) ON OBJECT::[auth_schema].[authentication_user] TO [notification_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'is_staff') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([is_staff]) ON OBJECT::[auth_schema].[authentication_user] TO [notification_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'last_login') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([last_login]) ON OBJECT::[auth_schema].[authentication_user] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[user_schema].[profiles_userprofile] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'user_id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([user_id]) ON OBJECT::[user_schema].[profiles_userprofile] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'first_name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([first_name]) ON OBJECT::[user_schema].[profiles_userprofile] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'last_name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([last_name]) ON OBJECT::[user_schema].[profiles_userprofile] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'phone') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([phone]) ON OBJECT::[user_schema].[profiles_userprofile] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'bio') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([bio]) ON OBJECT::[user_schema].[profiles_userprofile] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'created_at') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([created_at]) ON OBJECT::[user_schema].[profiles_userprofile] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'updated_at') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([updated_at]) ON OBJECT::[user_schema].[profiles_userprofile] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_profile]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[user_schema].[profiles_profile] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_profile]', N'user_id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([user_id]) ON OBJECT::[user_schema].[profiles_profile] TO [notification_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_profile]', N'display_name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([display_name]) ON OBJECT::[user_schema].[profiles_profile] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[institution_schema].[institutions_institution] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'code') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([code]) ON OBJECT::[institution_schema].[institutions_institution] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([name]) ON OBJECT::[institution_schema].[institutions_institution] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'kind') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([kind]) ON OBJECT::[institution_schema].[institutions_institution] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'country') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([country]) ON OBJECT::[institution_schema].[institutions_institution] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'website') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([website]) ON OBJECT::[institution_schema].[institutions_institution] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'created_at') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([created_at]) ON OBJECT::[institution_schema].[institutions_institution] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[institution_schema].[institutions_program] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'institution_id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([institution_id]) ON OBJECT::[institution_schema].[institutions_program] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'code') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([code]) ON OBJECT::[institution_schema].[institutions_program] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([name]) ON OBJECT::[institution_schema].[institutions_program] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'level') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([level]) ON OBJECT::[institution_schema].[institutions_program] TO [notification_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'duration_years') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([duration_years]) ON OBJECT::[institution_schema].[institutions_program] TO [notification_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[auth_schema] TO [notification_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[user_schema] TO [notification_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[institution_schema] TO [notification_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[notification_schema] TO [notification_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[application_schema] TO [notification_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[internship_schema] TO [notification_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[shared_schema] TO [notification_service_role]';
    EXEC sys.sp_executesql N'DENY CREATE TABLE, CREATE VIEW, CREATE PROCEDURE, CREATE FUNCTION, CREATE SCHEMA TO [notification_service_role]';
END
GO

-- Database user of application: DEFAULT_SCHEMA is PostgreSQL's search_path.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'application_service_role')
BEGIN
    EXEC sys.sp_executesql N'CREATE USER [application_service_role] FOR LOGIN [application_service_role] WITH DEFAULT_SCHEMA = [application_schema]';
END
GO

-- application_service_role: its own schema, the schemas it may read (auth, user, institution, internship), and no DDL.
IF USER_ID(N'application_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON SCHEMA::[application_schema] TO [application_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[auth_schema] FROM [application_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[user_schema] FROM [application_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[institution_schema] FROM [application_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[internship_schema] FROM [application_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[auth_schema].[authentication_user] TO [application_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'email') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([email]) ON OBJECT::[auth_schema].[authentication_user] TO [application_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'is_active') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([is_active]) ON OBJECT::[auth_schema].[authentication_user] TO [application_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'is_staff') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([is_staff]) ON OBJECT::[auth_schema].[authentication_user] TO [application_service_role]';
    IF COL_LENGTH(N'[auth_schema].[authentication_user]', N'last_login') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([last_login]) ON OBJECT::[auth_schema].[authentication_user] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[user_schema].[profiles_userprofile] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'user_id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([user_id]) ON OBJECT::[user_schema].[profiles_userprofile] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'first_name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([first_name]) ON OBJECT::[user_schema].[profiles_userprofile] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'last_name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([last_name]) ON OBJECT::[user_schema].[profiles_userprofile] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'phone') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([phone]) ON OBJECT::[user_schema].[profiles_userprofile] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'bio') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([bio]) ON OBJECT::[user_schema].[profiles_userprofile] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'created_at') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([created_at]) ON OBJECT::[user_schema].[profiles_userprofile] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'updated_at') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([updated_at]) ON OBJECT::[user_schema].[profiles_userprofile] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_profile]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[user_schema].[profiles_profile] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_profile]', N'user_id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([user_id]) ON OBJECT::[user_schema].[profiles_profile] TO [application_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_profile]', N'display_name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([display_name]) ON OBJECT::[user_schema].[profiles_profile] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[institution_schema].[institutions_institution] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'code') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([code]) ON OBJECT::[institution_schema].[institutions_institution] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([name]) ON OBJECT::[institution_schema].[institutions_institution] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'kind') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([kind]) ON OBJECT::[institution_schema].[institutions_institution] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'country') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([country]) ON OBJECT::[institution_schema].[institutions_institution] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'website') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([website]) ON OBJECT::[institution_schema].[institutions_institution] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'created_at') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([created_at]) ON OBJECT::[institution_schema].[institutions_institution] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[institution_schema].[institutions_program] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'institution_id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([institution_id]) ON OBJECT::[institution_schema].[institutions_program] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'code') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([code]) ON OBJECT::[institution_schema].[institutions_program] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([name]) ON OBJECT::[institution_schema].[institutions_program] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'level') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([level]) ON OBJECT::[institution_schema].[institutions_program] TO [application_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'duration_years') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([duration_years]) ON OBJECT::[institution_schema].[institutions_program] TO [application_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[auth_schema] TO [application_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[user_schema] TO [application_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[institution_schema] TO [application_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[notification_schema] TO [application_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[application_schema] TO [application_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[internship_schema] TO [application_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[shared_schema] TO [application_service_role]';
    EXEC sys.sp_executesql N'DENY CREATE TABLE, CREATE VIEW, CREATE PROCEDURE, CREATE FUNCTION, CREATE SCHEMA TO [application_service_role]';
END
GO

-- Database user of internship: DEFAULT_SCHEMA is PostgreSQL's search_path.
IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'internship_service_role')
BEGIN
    EXEC sys.sp_executesql N'CREATE USER [internship_service_role] FOR LOGIN [internship_service_role] WITH DEFAULT_SCHEMA = [internship_schema]';
END
GO

-- internship_service_role: its own schema, the schemas it may read (user, institution), and no DDL.
IF USER_ID(N'internship_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON SCHEMA::[internship_schema] TO [internship_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[user_schema] FROM [internship_service_role]';
    EXEC sys.sp_executesql N'REVOKE SELECT ON SCHEMA::[institution_schema] FROM [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[user_schema].[profiles_userprofile] TO [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'user_id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([user_id]) ON OBJECT::[user_schema].[profiles_userprofile] TO [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'first_name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([first_name]) ON OBJECT::[user_schema].[profiles_userprofile] TO [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'last_name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([last_name]) ON OBJECT::[user_schema].[profiles_userprofile] TO [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'phone') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([phone]) ON OBJECT::[user_schema].[profiles_userprofile] TO [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'bio') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([bio]) ON OBJECT::[user_schema].[profiles_userprofile] TO [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'created_at') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([created_at]) ON OBJECT::[user_schema].[profiles_userprofile] TO [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_userprofile]', N'updated_at') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([updated_at]) ON OBJECT::[user_schema].[profiles_userprofile] TO [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_profile]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[user_schema].[profiles_profile] TO [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_profile]', N'user_id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([user_id]) ON OBJECT::[user_schema].[profiles_profile] TO [internship_service_role]';
    IF COL_LENGTH(N'[user_schema].[profiles_profile]', N'display_name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([display_name]) ON OBJECT::[user_schema].[profiles_profile] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[institution_schema].[institutions_institution] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'code') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([code]) ON OBJECT::[institution_schema].[institutions_institution] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([name]) ON OBJECT::[institution_schema].[institutions_institution] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'kind') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([kind]) ON OBJECT::[institution_schema].[institutions_institution] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'country') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([country]) ON OBJECT::[institution_schema].[institutions_institution] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'website') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([website]) ON OBJECT::[institution_schema].[institutions_institution] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_institution]', N'created_at') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([created_at]) ON OBJECT::[institution_schema].[institutions_institution] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([id]) ON OBJECT::[institution_schema].[institutions_program] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'institution_id') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([institution_id]) ON OBJECT::[institution_schema].[institutions_program] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'code') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([code]) ON OBJECT::[institution_schema].[institutions_program] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'name') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([name]) ON OBJECT::[institution_schema].[institutions_program] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'level') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([level]) ON OBJECT::[institution_schema].[institutions_program] TO [internship_service_role]';
    IF COL_LENGTH(N'[institution_schema].[institutions_program]', N'duration_years') IS NOT NULL EXEC sys.sp_executesql N'GRANT SELECT ([duration_years]) ON OBJECT::[institution_schema].[institutions_program] TO [internship_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[auth_schema] TO [internship_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[user_schema] TO [internship_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[institution_schema] TO [internship_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[notification_schema] TO [internship_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[application_schema] TO [internship_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[internship_schema] TO [internship_service_role]';
    EXEC sys.sp_executesql N'DENY ALTER, CONTROL, TAKE OWNERSHIP ON SCHEMA::[shared_schema] TO [internship_service_role]';
    EXEC sys.sp_executesql N'DENY CREATE TABLE, CREATE VIEW, CREATE PROCEDURE, CREATE FUNCTION, CREATE SCHEMA TO [internship_service_role]';
END
GO

-- The append-only audit log; the CHECK makes db_role the real inserter.
IF OBJECT_ID(N'shared_schema.audit_log', N'U') IS NULL
BEGIN
    EXEC sys.sp_executesql N'CREATE TABLE [shared_schema].[audit_log] (id BIGINT IDENTITY(1, 1) NOT NULL PRIMARY KEY, occurred_at DATETIMEOFFSET NOT NULL DEFAULT SYSDATETIMEOFFSET(), db_role SYSNAME NOT NULL DEFAULT USER_NAME(), service_name NVARCHAR(100) NOT NULL, action NVARCHAR(200) NOT NULL, resource_type NVARCHAR(200) NOT NULL, resource_id NVARCHAR(200) NULL, user_id NVARCHAR(200) NULL, details NVARCHAR(MAX) NOT NULL DEFAULT N''{}'', CONSTRAINT [audit_log_db_role_is_inserter] CHECK (db_role = USER_NAME()), CONSTRAINT [audit_log_details_json] CHECK (ISJSON(details) = 1))';
END
GO

-- auth_service_role may append to the audit log; never change or remove entries.
IF USER_ID(N'auth_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT INSERT ON [shared_schema].[audit_log] TO [auth_service_role]';
    EXEC sys.sp_executesql N'DENY SELECT, UPDATE, DELETE, ALTER ON [shared_schema].[audit_log] TO [auth_service_role]';
END
GO

-- user_service_role may append to the audit log; never change or remove entries.
IF USER_ID(N'user_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT INSERT ON [shared_schema].[audit_log] TO [user_service_role]';
    EXEC sys.sp_executesql N'DENY SELECT, UPDATE, DELETE, ALTER ON [shared_schema].[audit_log] TO [user_service_role]';
END
GO

-- institution_service_role may append to the audit log; never change or remove entries.
IF USER_ID(N'institution_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT INSERT ON [shared_schema].[audit_log] TO [institution_service_role]';
    EXEC sys.sp_executesql N'DENY SELECT, UPDATE, DELETE, ALTER ON [shared_schema].[audit_log] TO [institution_service_role]';
END
GO

-- notification_service_role may append to the audit log; never change or remove entries.
IF USER_ID(N'notification_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT INSERT ON [shared_schema].[audit_log] TO [notification_service_role]';
    EXEC sys.sp_executesql N'DENY SELECT, UPDATE, DELETE, ALTER ON [shared_schema].[audit_log] TO [notification_service_role]';
END
GO

-- application_service_role may append to the audit log; never change or remove entries.
IF USER_ID(N'application_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT INSERT ON [shared_schema].[audit_log] TO [application_service_role]';
    EXEC sys.sp_executesql N'DENY SELECT, UPDATE, DELETE, ALTER ON [shared_schema].[audit_log] TO [application_service_role]';
END
GO

-- internship_service_role may append to the audit log; never change or remove entries.
IF USER_ID(N'internship_service_role') IS NOT NULL
BEGIN
    EXEC sys.sp_executesql N'GRANT INSERT ON [shared_schema].[audit_log] TO [internship_service_role]';
    EXEC sys.sp_executesql N'DENY SELECT, UPDATE, DELETE, ALTER ON [shared_schema].[audit_log] TO [internship_service_role]';
END
GO

-- RLS predicate: the counterpart of current_user_id(); SESSION_CONTEXT is set per request with sp_set_session_context @key = N'current_user_id'.
IF OBJECT_ID(N'shared_schema.fn_current_user_predicate') IS NULL
BEGIN
    EXEC sys.sp_executesql N'CREATE FUNCTION [shared_schema].[fn_current_user_predicate](@user_id NVARCHAR(200)) RETURNS TABLE WITH SCHEMABINDING AS RETURN SELECT 1 AS allowed WHERE @user_id = CAST(SESSION_CONTEXT(N''current_user_id'') AS NVARCHAR(200))';
END
GO

-- The seed's policy on profiles, once the reference schema created the table (run the script again after migrating): filter and block predicates.
IF OBJECT_ID(N'user_schema.profiles_userprofile', N'U') IS NOT NULL AND OBJECT_ID(N'user_schema.user_profile_policy') IS NULL
BEGIN
    EXEC sys.sp_executesql N'CREATE SECURITY POLICY [user_schema].[user_profile_policy] ADD FILTER PREDICATE [shared_schema].[fn_current_user_predicate](CAST([user_id] AS NVARCHAR(200))) ON [user_schema].[profiles_userprofile], ADD BLOCK PREDICATE [shared_schema].[fn_current_user_predicate](CAST([user_id] AS NVARCHAR(200))) ON [user_schema].[profiles_userprofile] AFTER INSERT WITH (STATE = ON)';
END
GO
