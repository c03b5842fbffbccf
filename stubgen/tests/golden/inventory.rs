//! An interface for the golden test of JSON access: types of its own, and methods of no, one
//! and several parameters.

use multispace_rpc::rkyv::{Archive, Deserialize, Serialize};

/// A stock item.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(crate = multispace_rpc::rkyv, derive(Debug))]
pub struct Item {
    /// Its name.
    pub name: String,
    /// How many.
    pub count: u32,
}

/// Where an item is.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(crate = multispace_rpc::rkyv)]
pub enum Place {
    /// On a shelf.
    Shelf(u16),
    /// Gone.
    Gone,
}

/// Keeps stock.
pub trait Inventory {
    /// How many items there are.
    ///
    /// Counts every shelf.
    #[idempotent]
    async fn total(&self) -> u64;

    /// Put `items` on shelf `shelf`.
    async fn stock(&self, shelf: u16, items: Vec<Item>, note: Option<String>);

    /// Where `name` is, and how many.
    #[idempotent]
    async fn find(&self, #[key] name: String) -> Option<(Place, u32)>;

    /// Tell one instance.
    #[oneway]
    async fn note(&self, text: String);
}
