//! Output files are written under a temporary name in their destination folder
//! and renamed into place once complete (an atomic step on one file system),
//! so that readers never see, and failures never leave, a partial file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The temporary name to write `path` under: `.<name>.partial-<pid>` next to it.
pub fn partial_path_for(path: &Path) -> Result<PathBuf> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
    Ok(dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id())))
}
