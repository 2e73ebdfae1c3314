//! A folder of images as a video: PNG and JPEG files in name order, read with
//! the `image` crate and converted to 8-bit RGB.

use std::path::{Path, PathBuf};

use super::preprocess::RgbImage;
use crate::error::{Error, Result};

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

fn has_extension(path: &Path, list: &[&str]) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| list.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Whether `path` is named like a PNG or JPEG image.
pub fn is_image(path: &Path) -> bool {
    has_extension(path, IMAGE_EXTENSIONS)
}

/// The PNG/JPEG files directly in `dir`, sorted by name.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::list(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::list(dir, e))?.path();
        if path.is_file() && is_image(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads one image file (any format the `image` crate decodes) as 8-bit RGB.
pub fn read_image(path: &Path) -> Result<RgbImage> {
    let image = image::open(path).map_err(|e| Error::video(path, format!("cannot read the image: {e}")))?;
    let rgb = image.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Ok(RgbImage { width, height, data: rgb.into_raw() })
}
