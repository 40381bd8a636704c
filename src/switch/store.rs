//! The route switches on disk: one table (`route_switches`, route name →
//! JSON [`Switch`]) of the state database under `[state].dir` (`statedb`).
//! The database is opened at start-up when it exists (or the webhook inbox
//! needs it); otherwise the first change creates it, so a gateway whose
//! routes were never switched writes nothing there.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::Switch;

/// route name → JSON [`Switch`].
const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("route_switches");

/// The table, and the database it lives in once there is one.
pub(crate) struct Local {
    dir: PathBuf,
    db: ArcSwapOption<Database>,
}

impl Local {
    /// `db`: the state database when it is open already (it exists, or the
    /// inbox opened it).
    pub fn new(dir: PathBuf, db: Option<Arc<Database>>) -> Local {
        Local {
            dir,
            db: ArcSwapOption::new(db),
        }
    }

    /// Every stored switch; empty without a database. A row that does not
    /// parse is an error: a route must not come up enabled because its
    /// record could not be read.
    pub fn load(&self) -> Result<BTreeMap<String, Switch>, String> {
        let Some(db) = self.db.load_full() else {
            return Ok(BTreeMap::new());
        };
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        let table = match txn.open_table(ROUTES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            let switch: Switch = serde_json::from_slice(v.value())
                .map_err(|e| format!("the stored switch of route {}: {e}", k.value()))?;
            out.insert(k.value().to_string(), switch);
        }
        Ok(out)
    }

    /// Store `switch` for `route` (committed, synced), creating the
    /// database on the first change. Blocking; the caller serializes writes.
    pub fn put(&self, route: &str, switch: &Switch) -> Result<(), String> {
        let db = match self.db.load_full() {
            Some(db) => db,
            None => {
                let db = crate::statedb::open(&self.dir)?;
                self.db.store(Some(db.clone()));
                db
            }
        };
        let bytes = serde_json::to_vec(switch).map_err(|e| e.to_string())?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = txn.open_table(ROUTES).map_err(|e| e.to_string())?;
            table.insert(route, bytes.as_slice()).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    }

    /// Where the database lives (for messages).
    pub fn path(&self) -> PathBuf {
        self.dir.join(crate::statedb::DB_FILE)
    }
}
