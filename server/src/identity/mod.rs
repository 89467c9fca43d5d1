//! Recognising a machine from the identity evidence it presents at enrollment.
//!
//! Pure decision logic: no I/O, no database. The store looks up every identifier of an
//! [`Evidence`], hands the machines it found to [`decide`] as [`Candidate`]s and acts on the
//! [`Outcome`]. The rule is written for operators in `docs/identity.md`; keep the two in step.

mod decide;
mod normalize;
mod placeholders;

#[cfg(test)]
mod tests;

use anneal_shared::protocol::IdentityHints;

pub use decide::decide;
pub use normalize::{
    normalize_mac, normalize_serial, normalize_uuid_text, uuid_byte_swapped,
    uuid_from_dhcp_option97, uuid_from_smbios_bytes,
};
pub use placeholders::{
    is_identifying_mac, is_placeholder_serial, is_placeholder_uuid, PLACEHOLDER_SERIALS,
    PLACEHOLDER_UUIDS,
};

/// The kinds of identifier a machine can be known by.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum IdKind {
    /// SMBIOS type-1 system UUID.
    Uuid,
    /// SMBIOS type-1 system serial number.
    SystemSerial,
    /// SMBIOS type-3 chassis serial number.
    ChassisSerial,
    /// SMBIOS type-2 baseboard serial number.
    BaseboardSerial,
    /// MAC address of a physical, non-USB NIC.
    Mac,
    /// `/etc/machine-id` of an installed OS (lets agents on VMs without DMI be recognised).
    OsMachineId,
}

impl IdKind {
    /// Every kind, in sort order.
    pub const ALL: [IdKind; 6] = [
        IdKind::Uuid,
        IdKind::SystemSerial,
        IdKind::ChassisSerial,
        IdKind::BaseboardSerial,
        IdKind::Mac,
        IdKind::OsMachineId,
    ];

    /// The stable snake_case name (as serialised and stored).
    pub fn as_str(self) -> &'static str {
        match self {
            IdKind::Uuid => "uuid",
            IdKind::SystemSerial => "system_serial",
            IdKind::ChassisSerial => "chassis_serial",
            IdKind::BaseboardSerial => "baseboard_serial",
            IdKind::Mac => "mac",
            IdKind::OsMachineId => "os_machine_id",
        }
    }

    /// The kind named by [`IdKind::as_str`]; `None` for anything else.
    pub fn parse(s: &str) -> Option<IdKind> {
        IdKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The name an operator reads in a quarantine reason.
    pub fn label(self) -> &'static str {
        match self {
            IdKind::Uuid => "UUID",
            IdKind::SystemSerial => "system serial",
            IdKind::ChassisSerial => "chassis serial",
            IdKind::BaseboardSerial => "baseboard serial",
            IdKind::Mac => "MAC",
            IdKind::OsMachineId => "OS machine-id",
        }
    }
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One normalised identifier value, e.g. (Uuid, "4c4c4544-0033-...") or (Mac, "52:54:00:12:34:56").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier {
    /// What the value is.
    pub kind: IdKind,
    /// The canonical text (see `docs/identity.md`).
    pub value: String,
}

impl Identifier {
    /// Normalise `raw` as an identifier of `kind`; `None` if it is malformed or a value that must
    /// never identify a machine (a placeholder). A MAC's bus is not known here: callers holding
    /// NICs use [`Evidence::from_hints`], which also drops USB NICs.
    pub fn normalize(kind: IdKind, raw: &str) -> Option<Identifier> {
        let value = match kind {
            IdKind::Uuid => {
                let v = normalize_uuid_text(raw)?;
                if is_placeholder_uuid(&v) {
                    return None;
                }
                v
            }
            IdKind::SystemSerial | IdKind::ChassisSerial | IdKind::BaseboardSerial => {
                normalize_serial(raw)?
            }
            IdKind::OsMachineId => normalize_machine_id(raw)?,
            IdKind::Mac => {
                let v = normalize_mac(raw)?;
                if !is_identifying_mac(&v) {
                    return None;
                }
                v
            }
        };
        Some(Identifier { kind, value })
    }
}

impl std::fmt::Display for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.label(), self.value)
    }
}

/// Normalised, usable identity evidence: placeholders removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Sorted, deduplicated.
    pub identifiers: Vec<Identifier>,
}

impl Evidence {
    /// Normalise hints and drop every value that must never identify a machine.
    pub fn from_hints(h: &IdentityHints) -> Evidence {
        let scalar = [
            (IdKind::Uuid, &h.system_uuid),
            (IdKind::SystemSerial, &h.system_serial),
            (IdKind::ChassisSerial, &h.chassis_serial),
            (IdKind::BaseboardSerial, &h.baseboard_serial),
            (IdKind::OsMachineId, &h.os_machine_id),
        ];
        let mut ids: Vec<Identifier> = scalar
            .into_iter()
            .filter_map(|(kind, v)| Identifier::normalize(kind, v.as_deref()?))
            .collect();
        // A USB NIC is usually the BMC's host interface, which carries one MAC across a fleet.
        ids.extend(
            h.macs
                .iter()
                .filter(|n| !is_usb_bus(n.bus.as_deref()))
                .filter_map(|n| Identifier::normalize(IdKind::Mac, &n.mac)),
        );
        Evidence::sorted(ids)
    }

    /// Evidence from identifiers recorded earlier (e.g. by the store): each is normalised again and
    /// dropped if it no longer identifies, so a placeholder added to the list later stops matching.
    pub fn from_identifiers<I: IntoIterator<Item = Identifier>>(ids: I) -> Evidence {
        Evidence::sorted(
            ids.into_iter()
                .filter_map(|i| Identifier::normalize(i.kind, &i.value))
                .collect(),
        )
    }

    /// Identifiers the store should look up.
    pub fn identifiers(&self) -> &[Identifier] {
        &self.identifiers
    }

    /// Whether nothing usable was presented (such a machine cannot be recognised again).
    pub fn is_empty(&self) -> bool {
        self.identifiers.is_empty()
    }

    /// The identifiers of one kind.
    pub fn of_kind(&self, kind: IdKind) -> impl Iterator<Item = &Identifier> + '_ {
        self.identifiers.iter().filter(move |i| i.kind == kind)
    }

    fn sorted(mut ids: Vec<Identifier>) -> Evidence {
        ids.sort();
        ids.dedup();
        Evidence { identifiers: ids }
    }
}

fn is_usb_bus(bus: Option<&str>) -> bool {
    bus.is_some_and(|b| b.trim().eq_ignore_ascii_case("usb"))
}

/// A machine the store found holding at least one of the evidence's identifiers, with ALL identifiers the store has recorded for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The machine's id.
    pub machine_id: uuid::Uuid,
    /// Everything recorded for it (not only the identifiers that were looked up).
    pub evidence: Evidence,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new machine.
    New,
    /// This is that machine.
    Match(uuid::Uuid),
    /// Contradictory evidence: hold the enrollment for an operator. `reason` is a readable sentence naming the identifiers that agree and disagree.
    Quarantine {
        /// The machines involved, sorted; empty when the evidence holds no usable identifier.
        candidates: Vec<uuid::Uuid>,
        /// Why, for the operator.
        reason: String,
    },
}

/// The verdict plus identifier values found to be shared by different machines (the store then marks them shared so they never identify anyone again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What to do with the enrollment.
    pub decision: Decision,
    /// Values seen on this machine and on a different one; sorted, deduplicated.
    pub newly_shared: Vec<Identifier>,
}

/// An OS machine-id: 32 hex digits (systemd's `uninitialized` and repeated digits never identify).
pub fn normalize_machine_id(raw: &str) -> Option<String> {
    let v = raw.trim().to_ascii_lowercase();
    let first = v.chars().next()?;
    let valid = v.len() == 32 && v.chars().all(|c| c.is_ascii_hexdigit());
    (valid && !v.chars().all(|c| c == first)).then_some(v)
}
