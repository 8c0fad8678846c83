//! `crawlctl crawl --warc FILE`: the embedded workers each keep their
//! records in a file of their own; FILE is those files one after the other
//! (a WARC file may be concatenated with another, each starting with its
//! `warcinfo` record).

use std::path::Path;

use anyhow::Context;

/// Writes the `.warc` files of `dir`, in name order, into `file`.
pub fn gather(dir: &Path, file: &Path) -> anyhow::Result<()> {
    let mut parts: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "warc"))
        .collect();
    parts.sort();
    let mut out =
        std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?;
    for part in &parts {
        let mut input =
            std::fs::File::open(part).with_context(|| format!("reading {}", part.display()))?;
        std::io::copy(&mut input, &mut out)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    eprintln!(
        "wrote the WARC records of {} worker(s) to {}",
        parts.len(),
        file.display()
    );
    Ok(())
}
