-- Reverts 0013_printable_names.sql: fifoq.valid_name as 0001 made it.
CREATE OR REPLACE FUNCTION fifoq.valid_name(name text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN name IS NOT NULL
       AND char_length(name) BETWEEN 1 AND 255
       AND name !~ '[\x01-\x1f\x7f-\x9f]';
END
$$;
COMMENT ON FUNCTION fifoq.valid_name(text) IS
    'True when the text is a valid action or group name: 1-255 characters, none of them a control character.';
