//! TinyImageNet as its archive unpacks (`tiny-imagenet-200/`): `train/<wnid>/images/*.JPEG`
//! and `val/images/*.JPEG` labelled by `val/val_annotations.txt` (file, wnid, box), or a
//! `val/<wnid>/images/` tree where the validation images were sorted into class folders.
//! Classes are numbered in the sorted order of the training folders, as torchvision's
//! `ImageFolder` numbers them; the validation images are the test split. Images are 64 px
//! and decoded to RGB (the few grayscale ones have their channel repeated).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{DataError, Images};

/// The archive's folder.
pub const FOLDER: &str = "tiny-imagenet-200";
/// Side of the images, in pixels.
pub const SIDE: usize = 64;
/// Classes of the full dataset.
pub const CLASSES: usize = 200;

/// The image files of both splits, labelled.
#[derive(Clone, Debug)]
pub struct TinyFiles {
    pub dir: PathBuf,
    pub train: Vec<(PathBuf, i64)>,
    pub test: Vec<(PathBuf, i64)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: String) -> DataError {
    DataError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// The `.JPEG` files in `dir`, sorted.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("jpeg") || e.eq_ignore_ascii_case("jpg"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Sorted subfolder names of `dir`.
fn subfolders(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// The files under `root/tiny-imagenet-200`, if that folder exists; `Err` when it lacks
/// `train/` or `val/`.
pub fn find_in(root: &Path) -> Result<Option<PathBuf>, String> {
    let dir = root.join(FOLDER);
    if !dir.is_dir() {
        return Ok(None);
    }
    let missing: Vec<&str> = ["train", "val"]
        .into_iter()
        .filter(|sub| !dir.join(sub).is_dir())
        .collect();
    match missing.is_empty() {
        true => Ok(Some(dir)),
        false => Err(format!(
            "`{}` lacks `{}/`",
            dir.display(),
            missing.join("/`, `")
        )),
    }
}

/// List and label every image.
pub fn list(dir: &Path) -> Result<TinyFiles, DataError> {
    let train_dir = dir.join("train");
    let classes = subfolders(&train_dir)?;
    if classes.is_empty() || classes.len() > CLASSES {
        let reason = format!("{} class folders, expected 1 to {CLASSES}", classes.len());
        return Err(corrupt(&train_dir, reason));
    }
    let index: HashMap<&str, i64> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as i64))
        .collect();
    let mut train = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let folder = train_dir.join(class).join("images");
        let folder = if folder.is_dir() {
            folder
        } else {
            train_dir.join(class)
        };
        train.extend(images_in(&folder)?.into_iter().map(|p| (p, label as i64)));
    }
    let val = dir.join("val");
    let annotations = val.join("val_annotations.txt");
    let test = if annotations.is_file() {
        annotated(&val, &annotations, &index)?
    } else if val.join("images").is_dir() {
        return Err(corrupt(
            &annotations,
            "missing: it labels the images in `val/images/`".into(),
        ));
    } else {
        let mut test = Vec::new();
        for class in subfolders(&val)? {
            let label = *index.get(class.as_str()).ok_or_else(|| {
                corrupt(
                    &val,
                    format!("class folder `{class}` has no training folder"),
                )
            })?;
            let folder = val.join(&class).join("images");
            let folder = if folder.is_dir() {
                folder
            } else {
                val.join(&class)
            };
            test.extend(images_in(&folder)?.into_iter().map(|p| (p, label)));
        }
        test
    };
    Ok(TinyFiles {
        dir: dir.to_path_buf(),
        train,
        test,
    })
}

/// The validation images `val_annotations.txt` labels: one line per image of `val/images/`,
/// its file name and its class, tab-separated.
fn annotated(
    val: &Path,
    annotations: &Path,
    index: &HashMap<&str, i64>,
) -> Result<Vec<(PathBuf, i64)>, DataError> {
    let text = std::fs::read_to_string(annotations).map_err(io(annotations))?;
    let mut test = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |reason: String| corrupt(annotations, format!("line {}: {reason}", n + 1));
        let mut fields = line.split('\t');
        let (Some(file), Some(wnid)) = (fields.next(), fields.next()) else {
            return Err(at("no class".into()));
        };
        if file.contains(['/', '\\']) || file.starts_with('.') {
            return Err(at(format!("`{file}` is not a file name in `val/images/`")));
        }
        if !seen.insert(file) {
            return Err(at(format!("`{file}` is listed twice")));
        }
        let label = *index
            .get(wnid)
            .ok_or_else(|| at(format!("class `{wnid}` has no training folder")))?;
        let path = val.join("images").join(file);
        if !path.is_file() {
            return Err(at(format!("`{}` does not exist", path.display())));
        }
        test.push((path, label));
    }
    if test.is_empty() {
        return Err(corrupt(annotations, "lists no images".into()));
    }
    Ok(test)
}

/// Decode `files` in parallel into 64 px RGB planes.
pub fn read(files: &[(PathBuf, i64)]) -> Result<(Images, Vec<i64>), DataError> {
    let decoded: Vec<Vec<u8>> = files
        .par_iter()
        .map(|(path, _)| decode(path))
        .collect::<Result<_, _>>()?;
    let images = Images::from_channels_last(&decoded.concat(), files.len(), [3, SIDE, SIDE]);
    Ok((images, files.iter().map(|(_, l)| *l).collect()))
}

fn decode(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .map_err(|e| corrupt(path, format!("not a readable JPEG: {e}")))?;
    if (image.width() as usize, image.height() as usize) != (SIDE, SIDE) {
        return Err(corrupt(
            path,
            format!(
                "{}x{} px, expected {SIDE}x{SIDE}",
                image.width(),
                image.height()
            ),
        ));
    }
    Ok(image.to_rgb8().into_raw())
}
