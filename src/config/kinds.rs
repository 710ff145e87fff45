//! The table behind both kind registries (`bots::BotKinds`, `connectors::ConnectorKinds`):
//! each kind's name, what its registration keeps (`R`: functions made from the kind's
//! type), and the JSON Schema of its config when it has one. The registries add what
//! is theirs (reading, validating, building); naming, lookup and schemas live here once.

use std::collections::BTreeMap;

/// The JSON Schema of a kind's config (`<Config as schemars::JsonSchema>::json_schema`).
pub(crate) type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

#[derive(Clone)]
pub(crate) struct KindTable<R> {
    kinds: BTreeMap<&'static str, (R, Option<SchemaFn>)>,
}

impl<R> Default for KindTable<R> {
    fn default() -> Self {
        KindTable {
            kinds: BTreeMap::new(),
        }
    }
}

impl<R> std::fmt::Debug for KindTable<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl<R> KindTable<R> {
    /// Register `kind`, without a schema. A second registration of the same name
    /// replaces the first (so a user can swap a built-in kind for their own).
    pub fn insert(&mut self, kind: &'static str, registered: R) {
        self.kinds.insert(kind, (registered, None));
    }

    /// Give the registered `kind` its config's schema.
    pub fn set_schema(&mut self, kind: &str, schema: SchemaFn) {
        if let Some(entry) = self.kinds.get_mut(kind) {
            entry.1 = Some(schema);
        }
    }

    pub fn get(&self, kind: &str) -> Option<&R> {
        self.kinds.get(kind).map(|(r, _)| r)
    }

    /// The registered name equal to `kind` (as a `'static` str) and its registration.
    pub fn get_key_value(&self, kind: &str) -> Option<(&'static str, &R)> {
        self.kinds.get_key_value(kind).map(|(k, (r, _))| (*k, r))
    }

    /// The registered kind names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// Each kind with its config's JSON Schema (`None`: registered without one).
    pub fn config_schemas(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Vec<(&'static str, Option<schemars::Schema>)> {
        self.kinds
            .iter()
            .map(|(kind, (_, schema))| (*kind, schema.map(|schema| schema(generator))))
            .collect()
    }
}
