//! `kind = "file"`: JSON and CSV files on disk that bots query, for HR exports (birthdays,
//! anniversaries), device lists and the demo data. A request's path names a file below the
//! configured directory; `.json` files come back as they are, `.csv` files as an array of
//! objects keyed by the header row (all values strings). Query parameters are ignored.
//! Paths cannot leave the directory.

use super::*;
use serde::Deserialize;
use std::path::{Component, Path, PathBuf};

/// `[connectors.<name>] kind = "file"`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Directory the request paths are relative to.
    pub dir: PathBuf,
    /// Name used in messages to people. Default: the connector's name.
    #[serde(default)]
    pub display_name: Option<String>,
}

impl FileSourceConfig {
    pub fn validate(&self, name: &str, at: usize, issues: &mut crate::config::Issues) {
        if !self.dir.is_dir() {
            issues.at(
                at,
                format!(
                    "connector `{name}`: dir {:?} is not a directory",
                    self.dir.display().to_string()
                ),
            );
        }
    }
}

pub struct FileSource {
    name: String,
    display: String,
    dir: PathBuf,
}

impl FileSource {
    pub fn new(name: &str, config: FileSourceConfig) -> Self {
        FileSource {
            name: name.to_string(),
            display: config.display_name.unwrap_or_else(|| name.to_string()),
            dir: config.dir,
        }
    }

    /// The file a request path names, if it stays inside the directory.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        let rel = Path::new(path.trim_start_matches('/'));
        if rel.as_os_str().is_empty()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            return None;
        }
        Some(self.dir.join(rel))
    }
}

/// CSV text → array of objects keyed by the header row.
pub fn csv_to_json(text: &str) -> Result<serde_json::Value, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        let row: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        rows.push(serde_json::Value::Object(row));
    }
    Ok(serde_json::Value::Array(rows))
}

#[async_trait]
impl DataSource for FileSource {
    async fn fetch(&self, req: &DataRequest) -> Result<serde_json::Value, SourceError> {
        let not_found = || SourceError::NotFound {
            source_name: self.display.clone(),
            path: req.path.clone(),
        };
        let file = self.resolve(&req.path).ok_or_else(not_found)?;
        let text = tokio::fs::read_to_string(&file)
            .await
            .map_err(|_| not_found())?;
        let decode = |detail: String| SourceError::Decode {
            source_name: self.display.clone(),
            detail,
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                serde_json::from_str(&text).map_err(|e| decode(format!("{}: {e}", req.path)))
            }
            Some("csv") => csv_to_json(&text).map_err(|e| decode(format!("{}: {e}", req.path))),
            _ => Err(SourceError::Refused {
                source_name: self.display.clone(),
                detail: format!("{} is neither .json nor .csv", req.path),
            }),
        }
    }
}

#[async_trait]
impl Connector for FileSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "file"
    }
    async fn execute(&self, _op: &Operation, _key: &str) -> Result<Delivered, SendError> {
        Err(SendError::Unsupported(
            "send messages (it is a data source)",
        ))
    }
    fn data_source(&self) -> Option<&dyn DataSource> {
        Some(self)
    }
}

impl crate::connectors::ConnectorKind for FileSource {
    type Config = FileSourceConfig;

    fn build(
        name: &str,
        config: FileSourceConfig,
        _env: &crate::connectors::ConnectorEnv,
    ) -> crate::connectors::SharedConnector {
        std::sync::Arc::new(FileSource::new(name, config))
    }

    fn validate(
        name: &str,
        config: &FileSourceConfig,
        at: usize,
        issues: &mut crate::config::Issues,
    ) {
        config.validate(name, at, issues);
    }

    fn resolve_paths(config: &mut FileSourceConfig, folder: &std::path::Path) {
        if config.dir.is_relative() {
            config.dir = folder.join(&config.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_objects() {
        let v = csv_to_json("name, birthday\nAlice, 1990-03-04\n\"Bo, Jr\",2001-12-31\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"name":"Alice","birthday":"1990-03-04"},{"name":"Bo, Jr","birthday":"2001-12-31"}])
        );
    }

    #[tokio::test]
    async fn paths_stay_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"x":1}"#).unwrap();
        std::fs::write(dir.path().join("b.txt"), "x").unwrap();
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        let src = FileSource::new(
            "hr",
            FileSourceConfig {
                dir: dir.path().to_path_buf(),
                display_name: Some("HR export".into()),
            },
        );
        assert_eq!(
            src.fetch(&DataRequest::get("/a.json")).await.unwrap(),
            serde_json::json!({"x":1})
        );
        for bad in ["/../etc/passwd", "", "/", "/missing.json", "a/../../x.json"] {
            let e = src.fetch(&DataRequest::get(bad)).await.unwrap_err();
            assert!(matches!(e, SourceError::NotFound { .. }), "{bad}: {e}");
        }
        let e = src.fetch(&DataRequest::get("/b.txt")).await.unwrap_err();
        assert!(
            e.to_string().starts_with("HR export: /b.txt is neither"),
            "{e}"
        );
        let e = src.fetch(&DataRequest::get("/bad.json")).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("HR export sent data perch cannot read"),
            "{e}"
        );
    }
}
