//! No output may replace an input or another output: `-o` naming the engine
//! file given to `--weights` replaced the model with a WAV, and two outputs
//! with one name lost one of them, both silently. Paths are compared as the
//! file system resolves them (symbolic links, `..`, relative paths, hard links
//! to one file), including outputs that do not exist yet: their folder is
//! resolved and their file name appended, which is the file a write would
//! replace.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One path of a run and what it is for, as the user would name it in a
/// message (`--weights`, `-o`, `input`).
#[derive(Debug, Clone, Copy)]
pub struct NamedPath<'a> {
    /// How the user names this path in a message (`--weights`, `-o`, `input`).
    pub role: &'a str,
    /// The path itself.
    pub path: &'a Path,
}

impl<'a> NamedPath<'a> {
    /// Pairs `path` with its user-facing `role`.
    pub fn new(role: &'a str, path: &'a Path) -> Self {
        NamedPath { role, path }
    }
}

/// Refuses any output that is the same file as an input or as another output.
/// Call it once with every input (weights, checkpoint, CLIP, config, features,
/// video, init noise) and every output (WAV, mux, features, latents, engine)
/// of a run, before anything is written.
pub fn check_outputs(inputs: &[NamedPath], outputs: &[NamedPath]) -> Result<()> {
    let inputs: Vec<(NamedPath, Identity)> = inputs.iter().map(|p| (*p, Identity::of(p.path))).collect();
    let mut seen: Vec<(NamedPath, Identity)> = Vec::with_capacity(outputs.len());
    for out in outputs {
        let id = Identity::of(out.path);
        if let Some((input, _)) = inputs.iter().find(|(_, i)| i.same_as(&id)) {
            return Err(Error::InvalidInput(format!(
                "{} {} is the same file as {} {}: it would be overwritten (choose another output name)",
                out.role,
                out.path.display(),
                input.role,
                input.path.display()
            )));
        }
        if let Some((other, _)) = seen.iter().find(|(_, o)| o.same_as(&id)) {
            return Err(Error::InvalidInput(format!(
                "{} {} and {} {} are the same file: one output would replace the other",
                other.role,
                other.path.display(),
                out.role,
                out.path.display()
            )));
        }
        seen.push((*out, id));
    }
    Ok(())
}

/// What a path resolves to: its canonical form (for a file that does not exist
/// yet, its folder's canonical form plus its name) and, for an existing file,
/// its device and inode, which also match a hard link under another name.
#[derive(Debug)]
struct Identity {
    path: PathBuf,
    #[cfg(unix)]
    inode: Option<(u64, u64)>,
}

impl Identity {
    fn of(path: &Path) -> Self {
        Identity {
            path: resolve(path),
            #[cfg(unix)]
            inode: {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
            },
        }
    }

    fn same_as(&self, other: &Identity) -> bool {
        #[cfg(unix)]
        if let (Some(a), Some(b)) = (self.inode, other.inode)
            && a == b
        {
            return true;
        }
        self.path == other.path
    }
}

/// The canonical path of `path`, or of its folder joined with its name when it
/// does not exist; lexically absolute when the folder does not exist either
/// (writing there fails anyway, with its own message).
fn resolve(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => match std::fs::canonicalize(dir) {
            Ok(dir) => dir.join(name),
            Err(_) => absolute,
        },
        _ => absolute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named<'a>(list: &'a [(&'a str, PathBuf)]) -> Vec<NamedPath<'a>> {
        list.iter().map(|(r, p)| NamedPath::new(r, p)).collect()
    }

    #[test]
    fn an_output_naming_an_input_is_refused_however_it_is_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        let engine = d.join("engine.safetensors");
        std::fs::write(&engine, b"x").unwrap();
        std::os::unix::fs::symlink(&engine, d.join("link.safetensors")).unwrap();
        std::fs::hard_link(&engine, d.join("hard.safetensors")).unwrap();
        let inputs = [("--weights", engine.clone()), ("input", d.join("clip.mp4"))];
        for spelled in [
            engine.clone(),
            d.join("sub/../engine.safetensors"),
            d.join("./engine.safetensors"),
            d.join("link.safetensors"),
            d.join("hard.safetensors"),
        ] {
            let outputs = [("-o", spelled.clone())];
            let e = check_outputs(&named(&inputs), &named(&outputs)).unwrap_err().to_string();
            assert!(e.contains("-o") && e.contains("--weights"), "{spelled:?}: {e}");
        }
        // An input that does not exist (yet) is compared by name too.
        let outputs = [("--mux", d.join("sub/../clip.mp4"))];
        let e = check_outputs(&named(&inputs), &named(&outputs)).unwrap_err().to_string();
        assert!(e.contains("--mux") && e.contains("input"), "{e}");
    }

    #[test]
    fn two_outputs_naming_one_file_are_refused_even_before_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        let outputs = [("-o", d.join("x.wav")), ("--save-latents", d.join("a.st")), ("--mux", d.join("sub/../x.wav"))];
        let e = check_outputs(&[], &named(&outputs)).unwrap_err().to_string();
        assert!(e.contains("-o") && e.contains("--mux") && !e.contains("--save-latents"), "{e}");
        assert!(!d.join("x.wav").exists());
    }

    #[test]
    fn distinct_paths_pass_and_relative_paths_resolve_against_the_working_folder() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let inputs = [("--weights", d.join("engine.safetensors")), ("input", d.join("clip.mp4"))];
        let outputs = [("-o", d.join("clip.wav")), ("--mux", d.join("clip.with-audio.mp4"))];
        check_outputs(&named(&inputs), &named(&outputs)).unwrap();
        // The same file named relatively and absolutely.
        let cwd = std::env::current_dir().unwrap();
        let inputs = [("--config", cwd.join("Cargo.toml"))];
        let outputs = [("-o", PathBuf::from("Cargo.toml"))];
        assert!(check_outputs(&named(&inputs), &named(&outputs)).is_err());
        // A missing folder does not hide a clash, nor invent one.
        let inputs = [("--config", d.join("nope/c.json"))];
        assert!(check_outputs(&named(&inputs), &named(&[("-o", d.join("nope/c.json"))])).is_err());
        assert!(check_outputs(&named(&inputs), &named(&[("-o", d.join("nope/d.json"))])).is_ok());
    }
}
