//! Does a table or chain exist: one GET, answered by the object or `ENOENT`.

use std::io;

use super::Nftnl;
use super::wire::push_str_attr;
use crate::Family;

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;

impl Nftnl {
    /// Whether `table`/`chain` exists in `family`.
    pub fn chain_exists(&mut self, family: Family, table: &str, chain: &str) -> io::Result<bool> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_CHAIN_TABLE, table);
        push_str_attr(&mut attrs, NFTA_CHAIN_NAME, chain);
        self.exists(NFT_MSG_GETCHAIN, family.nfproto(), &attrs)
    }

    /// Whether table `name` exists in `family`.
    pub fn table_exists(&mut self, family: Family, name: &str) -> io::Result<bool> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_TABLE_NAME, name);
        self.exists(NFT_MSG_GETTABLE, family.nfproto(), &attrs)
    }

    /// Whether table `name` exists in the `inet` family.
    pub fn inet_table_exists(&mut self, name: &str) -> io::Result<bool> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_TABLE_NAME, name);
        self.exists(NFT_MSG_GETTABLE, libc::NFPROTO_INET as u8, &attrs)
    }
}
