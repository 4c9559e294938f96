//! Member names: normalisation and the checks that keep every entry inside the tree.
//!
//! Inside the pack module a path is a *relative* byte string: components joined by
//! single `/`, no leading `./`, no trailing `/`, no `.` or `..` component, no NUL.
//! The root of the tree is the empty path. The writer spells it `./` (root) and
//! `./a/b` (others), with a trailing `/` for directories, as `tar -C dir .` does.

/// Turns a member name from an input archive into a relative path.
///
/// Accepts `./a`, `a`, `a//b`, `./a/./b/`; the root (`.`, `./`) becomes the empty path.
/// Refuses, with the reason, names that are empty, absolute, contain a `..`
/// component or a NUL byte: extracting them could write outside the target directory.
pub fn normalize(name: &[u8]) -> Result<Vec<u8>, &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name[0] == b'/' {
        return Err("the path is absolute");
    }
    if name.contains(&0) {
        return Err("the name contains a NUL byte");
    }
    let mut out = Vec::with_capacity(name.len());
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("the path has a '..' component"),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Ok(out)
}

/// True if `path` is already in normal form (what [`normalize`] returns).
pub fn is_normal(path: &[u8]) -> bool {
    path.is_empty() || (!path.contains(&0) && path.split(|&b| b == b'/').all(|c| !matches!(c, b"" | b"." | b"..")))
}

/// The proper ancestors of a relative path, shortest first: `a/b/c` gives `a`, `a/b`.
pub fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter().enumerate().filter(|&(_, &b)| b == b'/').map(move |(i, _)| &path[..i])
}

/// The name written into the archive: `./` for the root, `./path` otherwise, and a
/// trailing `/` for directories.
pub fn member_name(path: &[u8], is_dir: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + 3);
    out.extend_from_slice(b"./");
    out.extend_from_slice(path);
    if is_dir && !path.is_empty() {
        out.push(b'/');
    }
    out
}

/// A name made printable for error messages (non-UTF-8 bytes escaped).
pub fn display(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_harmless_spellings() {
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b".").unwrap(), b"");
        assert_eq!(normalize(b"./a/b/").unwrap(), b"a/b");
        assert_eq!(normalize(b"a//./b").unwrap(), b"a/b");
        assert_eq!(normalize(b"././a").unwrap(), b"a");
        assert_eq!(normalize(b"a/..b/c..").unwrap(), b"a/..b/c..");
        assert_eq!(normalize(b"\xff\xfe/x").unwrap(), b"\xff\xfe/x");
    }

    #[test]
    fn refuses_escapes() {
        for bad in [&b"/etc/passwd"[..], b"../x", b"a/../../x", b"a/..", b"./..", b"", b"a\0b", b"//x"] {
            assert!(normalize(bad).is_err(), "{}", display(bad));
        }
    }

    #[test]
    fn normal_form_and_names() {
        assert!(is_normal(b""));
        assert!(is_normal(b"a/b"));
        assert!(!is_normal(b"a/"));
        assert!(!is_normal(b"./a"));
        assert!(!is_normal(b"a/../b"));
        assert!(!is_normal(b"/a"));
        assert_eq!(ancestors(b"a/b/c").collect::<Vec<_>>(), vec![&b"a"[..], b"a/b"]);
        assert_eq!(ancestors(b"a").count(), 0);
        assert_eq!(member_name(b"", true), b"./");
        assert_eq!(member_name(b"etc", true), b"./etc/");
        assert_eq!(member_name(b"etc/passwd", false), b"./etc/passwd");
    }
}
