-- Read models live in a schema of their own (`projection.schema`, default `triad_read`), so
-- `triad replay` can rebuild one from offset 0 into a shadow schema while the live one keeps
-- serving, and swap them by renaming. Schema names are identifiers, which SQL cannot bind as
-- parameters: these functions quote them with format('%I') so no caller ever builds SQL text.

CREATE OR REPLACE FUNCTION triad_create_schema(name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', name);
END
$$;

-- Makes `shadow` the schema called `live`; the previous live schema is dropped.
CREATE OR REPLACE FUNCTION triad_swap_schema(live text, shadow text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    retired text := live || '_retired';
BEGIN
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', retired);
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = live) THEN
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', live, retired);
    END IF;
    EXECUTE format('ALTER SCHEMA %I RENAME TO %I', shadow, live);
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', retired);
END
$$;

CREATE OR REPLACE FUNCTION triad_drop_schema(name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', name);
END
$$;

-- A content hash of one table, independent of physical row order: rows as text, sorted.
-- Two read models built from the same records hash the same.
CREATE OR REPLACE FUNCTION triad_table_hash(schema_name text, table_name text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    result text;
BEGIN
    EXECUTE format(
        'SELECT md5(coalesce(string_agg(r, E''\n'' ORDER BY r), '''')) '
        'FROM (SELECT t::text AS r FROM %I.%I t) s', schema_name, table_name)
    INTO result;
    RETURN result;
END
$$;
