-- Settings (SPEC.md section 2): read at use, so a change applies at once.

CREATE OR REPLACE FUNCTION hopper.get_setting(name text)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_value text;
BEGIN
    SELECT s.value INTO found_value FROM hopper.settings AS s WHERE s.name = get_setting.name;
    IF NOT FOUND THEN
        PERFORM hopper._raise('get_setting', '22023', format('name "%s" is not a setting', name));
    END IF;
    RETURN found_value;
END
$$;

-- Validates and stores a setting; returns the stored (normalised) value.
CREATE OR REPLACE FUNCTION hopper.set_setting(name text, value text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind text := CASE name
        WHEN 'completed_retention' THEN 'interval'
        WHEN 'failed_retention' THEN 'interval'
        WHEN 'timeout_grace' THEN 'interval'
        WHEN 'max_payload_bytes' THEN 'integer'
        WHEN 'max_batch_size' THEN 'integer'
        WHEN 'notify' THEN 'choice'
    END;
    normalised text;
BEGIN
    IF kind IS NULL THEN
        PERFORM hopper._raise('set_setting', '22023', format('name "%s" is not a setting', name));
    END IF;
    PERFORM hopper._check_required('set_setting', 'value', value IS NULL);
    BEGIN
        IF kind = 'choice' THEN
            normalised := CASE WHEN value IN ('when_waiting', 'always') THEN value END;
        ELSIF kind = 'interval' THEN
            normalised := value::interval::text;
            IF value::interval < interval '0' THEN
                normalised := NULL;
            END IF;
        ELSIF value::integer > 0 THEN
            normalised := value::integer::text;
        END IF;
    EXCEPTION WHEN data_exception THEN
        normalised := NULL;
    END;
    IF normalised IS NULL THEN
        PERFORM hopper._raise('set_setting', '22023', format(
            'value of %s must be %s (got "%s")', name,
            CASE kind
                WHEN 'interval' THEN 'a non-negative interval'
                WHEN 'choice' THEN 'when_waiting or always'
                ELSE 'a positive integer'
            END,
            value
        ));
    END IF;
    UPDATE hopper.settings AS s SET value = normalised WHERE s.name = set_setting.name;
    RETURN normalised;
END
$$;
