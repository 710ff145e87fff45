//! The card engine: `cards/*.hbs` Handlebars templates, loaded and compiled at start,
//! rendered with data into a validated neutral `Card`.
//!
//! Sits between bots and connectors: a bot calls `engine.card("reminder", &data)` and
//! puts the neutral card JSON in its action; the connector renders it for its platform
//! with `cards::render`. `perch card render` and `POST /api/cards/render` use
//! `render_for` to do both steps at once.
//!
//! Safety: strict mode (a missing variable is an error naming the template and line),
//! the JSON escaper and helpers from `helpers`, and triple-stash `{{{x}}}` refused at
//! load (it would bypass the escaper). Every rendered output is parsed with serde_json
//! and then into the card model, so a template can only ever produce a valid card or a
//! clear error. Each template may have sample data beside it (`<name>.sample.json`);
//! at load every template with a sample is rendered with it, so a template that
//! compiles but produces a broken card also stops `perch check` and `perch serve`.

use super::CardError;
use super::model::{Card, one_line};
use handlebars::{Handlebars, RenderErrorReason};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One loaded template.
#[derive(Debug, Clone)]
pub struct TemplateInfo {
    pub name: String,
    /// The `.hbs` file (or a label for templates given as text).
    pub path: PathBuf,
    /// The sample data beside it, if any.
    pub sample: Option<Value>,
    /// The template text as compiled (the card studio edits a copy of it).
    pub source: String,
}

/// Compiled card templates.
#[derive(Clone)]
pub struct CardEngine {
    hb: Handlebars<'static>,
    templates: BTreeMap<String, TemplateInfo>,
}

impl std::fmt::Debug for CardEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardEngine")
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for CardEngine {
    fn default() -> Self {
        Self::empty()
    }
}

/// `line:column` (1-based) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl CardEngine {
    /// An engine with no templates.
    pub fn empty() -> Self {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        // Cards are JSON: keep template whitespace as written.
        hb.set_prevent_indent(true);
        super::helpers::register(&mut hb);
        CardEngine {
            hb,
            templates: BTreeMap::new(),
        }
    }

    /// Load every `*.hbs` in `dir` (with `<name>.sample.json` beside it when present),
    /// compile them and render each sample. All problems are reported together, each
    /// with its file and line. A missing directory gives an empty engine.
    pub fn load_dir(dir: &Path) -> Result<Self, CardError> {
        let mut engine = Self::empty();
        if !dir.is_dir() {
            tracing::warn!(dir = %dir.display(), "card template directory not found: no card templates loaded");
            return Ok(engine);
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| CardError::Io {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| CardError::Io {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "hbs"))
            .collect();
        files.sort();
        let mut errors = Vec::new();
        for path in files {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let source = match read(&path) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let sample_path = dir.join(format!("{name}.sample.json"));
            let sample = if sample_path.exists() {
                match read(&sample_path).and_then(|t| {
                    serde_json::from_str::<Value>(&t).map_err(|e| CardError::Template {
                        file: sample_path.display().to_string(),
                        line: e.line(),
                        column: e.column(),
                        message: format!("sample data is not JSON: {}", one_line(&e.to_string())),
                    })
                }) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                }
            } else {
                None
            };
            if let Err(e) = engine.add(&name, &source, &path, sample) {
                errors.push(e);
            }
        }
        // Render samples once everything is registered (templates may use each other as partials).
        for info in engine.templates.values() {
            if let Some(Err(e)) = info
                .sample
                .as_ref()
                .map(|sample| engine.card(&info.name, sample))
            {
                errors.push(CardError::Sample {
                    file: info.path.display().to_string(),
                    message: e.to_string(),
                });
            }
        }
        match errors.len() {
            0 => Ok(engine),
            1 => Err(errors.remove(0)),
            _ => Err(CardError::Many(errors)),
        }
    }

    /// Compile one template from text. `path` is only used in messages.
    pub fn add(
        &mut self,
        name: &str,
        source: &str,
        path: &Path,
        sample: Option<Value>,
    ) -> Result<(), CardError> {
        let file = path.display().to_string();
        if !valid_name(name) {
            return Err(CardError::Template {
                file,
                line: 1,
                column: 1,
                message: format!(
                    "template name {name:?} may only use letters, digits, `_` and `-`"
                ),
            });
        }
        if let Some(at) = source.find("{{{") {
            let (line, column) = line_col(source, at);
            return Err(CardError::Template {
                file,
                line,
                column,
                message: "`{{{` (unescaped output) is not allowed in card templates: it could break the JSON; use {{json x}} to embed a value".into(),
            });
        }
        self.hb
            .register_template_string(name, source)
            .map_err(|e| {
                let (line, column) = e.pos().unwrap_or((1, 1));
                CardError::Template {
                    file: file.clone(),
                    line,
                    column,
                    message: one_line(&e.reason().to_string()),
                }
            })?;
        self.templates.insert(
            name.to_string(),
            TemplateInfo {
                name: name.to_string(),
                path: path.to_path_buf(),
                sample,
                source: source.to_string(),
            },
        );
        Ok(())
    }

    /// A copy of this engine with template `name` compiled from `source` instead (the
    /// card studio's edit, never saved): its errors carry the line and column in
    /// `source`. The other templates stay, so partials still resolve.
    pub fn with_edited(&self, name: &str, source: &str) -> Result<CardEngine, CardError> {
        let (path, sample) = match self.templates.get(name) {
            Some(t) => (t.path.clone(), t.sample.clone()),
            None => (PathBuf::from(format!("{name}.hbs")), None),
        };
        let mut edited = self.clone();
        edited.add(name, source, &path, sample)?;
        Ok(edited)
    }

    /// Template names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.templates.keys().map(String::as_str).collect()
    }

    /// All templates, sorted by name.
    pub fn templates(&self) -> impl Iterator<Item = &TemplateInfo> {
        self.templates.values()
    }

    pub fn template(&self, name: &str) -> Option<&TemplateInfo> {
        self.templates.get(name)
    }

    /// Render template `name` with `data` to the JSON text it produces (not yet checked).
    fn render_text(&self, name: &str, data: &Value) -> Result<String, CardError> {
        let Some(info) = self.templates.get(name) else {
            return Err(CardError::UnknownTemplate {
                name: name.to_string(),
                known: if self.templates.is_empty() {
                    "none".into()
                } else {
                    self.names().join(", ")
                },
            });
        };
        self.hb.render(name, data).map_err(|e| {
            let message = match e.reason() {
                RenderErrorReason::MissingVariable(Some(path)) => {
                    format!("variable `{path}` is missing (strict mode)")
                }
                RenderErrorReason::MissingVariable(None) => {
                    "a variable is missing (strict mode)".into()
                }
                RenderErrorReason::Other(m) => m.clone(),
                other => one_line(&other.to_string()),
            };
            CardError::Render {
                template: e.template_name.clone().unwrap_or_else(|| name.to_string()),
                file: info.path.display().to_string(),
                line: e.line_no,
                column: e.column_no,
                message,
            }
        })
    }

    /// Render template `name` with `data` into a validated neutral card.
    pub fn card(&self, name: &str, data: &Value) -> Result<Card, CardError> {
        let text = self.render_text(name, data)?;
        let value: Value = serde_json::from_str(&text).map_err(|e| CardError::Output {
            template: name.to_string(),
            message: format!(
                "rendered text is not valid JSON at output line {} column {}: {}",
                e.line(),
                e.column(),
                one_line(&e.to_string())
            ),
        })?;
        Card::parse(&value).map_err(|m| CardError::Output {
            template: name.to_string(),
            message: m,
        })
    }

    /// Render template `name` with `data` into neutral card JSON (what bots send).
    pub fn card_json(&self, name: &str, data: &Value) -> Result<Value, CardError> {
        let card = self.card(name, data)?;
        serde_json::to_value(card).map_err(|e| CardError::Invalid(e.to_string()))
    }

    /// Render template `name` with `data` for `platform` (see `cards::render`).
    pub fn render_for(&self, name: &str, data: &Value, platform: &str) -> Result<Value, CardError> {
        let card = self.card(name, data)?;
        super::render_card(platform, &card)
    }
}
