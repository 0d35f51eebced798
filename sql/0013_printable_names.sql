-- Action and group names: SQL and Python refuse the same characters.
-- depends: 0012_line_start
--
-- Why. SPEC §2: a name is 1-255 printable characters. fifoq.valid_name
-- refused only control characters (U+0001-001F, U+007F-009F), while the
-- Python API refused everything str.isprintable() does not accept, which
-- also covers invisible format characters (U+200B zero-width space, the
-- bidirectional controls) and separators other than the space (U+00A0).
-- A queue named from SQL with one of those could then not be read through
-- the Python API or the CLI: they refused its name.
--
-- What. One character class, written out here and in fifoq/validation.py:
-- the Unicode (14.0) categories Cc (control), Cf (format), Zl and Zp (line
-- and paragraph separators), Zs (spaces) except U+0020 itself, and Co
-- (private use). Unassigned code points are accepted by both, since they
-- cannot be listed stably. tests/integration checks, code point by code
-- point, that the two agree. Existing names are not checked again (a CHECK
-- constraint is checked on write).
CREATE OR REPLACE FUNCTION fifoq.valid_name(name text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN name IS NOT NULL
       AND char_length(name) BETWEEN 1 AND 255
       AND name !~ '[\u0001-\u001f\u007f-\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000\ue000-\uf8ff\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f\U000f0000-\U000ffffd\U00100000-\U0010fffd]';
END
$$;
COMMENT ON FUNCTION fifoq.valid_name(text) IS
    'True when the text is a valid action or group name: 1-255 printable characters, so none that is a control, '
    'format, separator (other than the space) or private-use character.';
