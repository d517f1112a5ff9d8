//! The index rebuilt from the packs themselves. Every pack carries what its index object
//! holds: its header (data key id and salt) at the front and its blob list in a sealed trailer
//! at the end (docs/REPOSITORY.md, "Packs"). So a damaged or missing index object costs two
//! small reads of its pack: readers work around one (`Repository::each_index_pack`), and
//! `snapcrypt repair index` writes it again (as restic's `repair index` does).

use super::{PackInfo, Repository};
use crate::engine::error::EngineError;
use crate::engine::format::{
    BlobEntry, INDEX_ENTRY_LEN, ObjectKind, PACK_HEADER_LEN, TRAILER_COUNTER, pack_object_name,
};
use crate::engine::lock::RepoLock;
use crate::engine::pack::{TRAILER_AAD, parse_pack_header};

/// What `repair index` found and did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RepairReport {
    /// Packs in the repository.
    pub packs: usize,
    /// Packs whose index object was whole and agreed with the pack.
    pub whole: usize,
    /// Index objects written again from their packs (damaged, missing, or disagreeing).
    pub rebuilt: Vec<String>,
    /// Packs whose own header or trailer does not open either: their blobs are lost (verify
    /// names the snapshots that need them); their index objects are left as they are.
    pub unreadable: Vec<String>,
}

impl Repository {
    /// Pack `id`'s header and blob list, read from the pack: its first bytes and its sealed
    /// trailer (authenticated with the pack's data key), never the whole pack.
    pub async fn entries_from_pack(
        &self,
        id: &str,
    ) -> Result<(PackInfo, Vec<BlobEntry>), EngineError> {
        let name = pack_object_name(id);
        let corrupt = |reason: String| EngineError::Corrupt {
            object: name.clone(),
            reason,
        };
        let size = self.backend.object_size(&name).await?;
        if size < (PACK_HEADER_LEN + 4) as u64 {
            return Err(corrupt(format!("{size} bytes: too short for a pack")));
        }
        let header = self
            .backend
            .get_range(&name, 0, PACK_HEADER_LEN as u64)
            .await?;
        let (data_key_id, salt) =
            parse_pack_header(&header).ok_or_else(|| corrupt("bad pack header".into()))?;
        let len_bytes = self.backend.get_range(&name, size - 4, 4).await?;
        let len = u32::from_le_bytes(
            len_bytes[..4]
                .try_into()
                .map_err(|_| corrupt("short read of the trailer length".into()))?,
        );
        let r = crate::engine::pack::trailer_range(size, len).map_err(corrupt)?;
        let mut trailer = self
            .backend
            .get_range(&name, r.start, r.end - r.start)
            .await?
            .to_vec();
        let key = self.key(&data_key_id)?;
        let n = key
            .object_cipher(&salt)?
            .open(TRAILER_COUNTER, TRAILER_AAD, &mut trailer)
            .map_err(|_| corrupt("trailer authentication failed".into()))?;
        let entries = BlobEntry::decode_all(&trailer[..n])
            .ok_or_else(|| corrupt("bad trailer entries".into()))?;
        let info = PackInfo {
            id: id.to_string(),
            data_key_id,
            salt,
        };
        Ok((info, entries))
    }

    /// Write pack `info`'s index object from its header and `entries`.
    async fn rewrite_index(
        &self,
        info: &PackInfo,
        entries: &[BlobEntry],
    ) -> Result<(), EngineError> {
        let mut plain = Vec::with_capacity(PACK_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN);
        plain.extend_from_slice(&crate::engine::pack::pack_header(
            &info.data_key_id,
            &info.salt,
        ));
        for e in entries {
            e.encode(&mut plain);
        }
        let key = self.key(&info.data_key_id)?;
        self.put_sealed(
            &key,
            ObjectKind::Index,
            &format!("index/{}", info.id),
            plain,
        )
        .await
    }
}

/// Rebuild the index objects that are damaged, missing, or disagree with their packs, from
/// the packs, under the repository's exclusive lock (`wait`: how long to wait for it).
pub async fn repair_index(
    repo: &Repository,
    wait: std::time::Duration,
) -> Result<RepairReport, EngineError> {
    let lock = RepoLock::acquire(&repo.backend, true, wait).await?;
    let result = rebuild(repo, &lock).await;
    lock.release().await?;
    result
}

async fn rebuild(repo: &Repository, lock: &RepoLock) -> Result<RepairReport, EngineError> {
    let mut report = RepairReport::default();
    let packs: Vec<String> = repo
        .backend
        .list("data")
        .await?
        .into_iter()
        .filter_map(|(name, _)| name.rsplit('/').next().map(str::to_string))
        .filter(|id| super::is_object_id(id))
        .collect();
    report.packs = packs.len();
    for id in packs {
        let from_pack = match repo.entries_from_pack(&id).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(pack = %id, error = %e, "pack unreadable: its index object is left as it is");
                report.unreadable.push(id);
                continue;
            }
        };
        let indexed = repo.index_entries(&id).await;
        if indexed.as_ref().is_ok_and(|e| *e == from_pack.1) {
            report.whole += 1;
            continue;
        }
        lock.check()?;
        repo.rewrite_index(&from_pack.0, &from_pack.1).await?;
        report.rebuilt.push(id);
    }
    Ok(report)
}
