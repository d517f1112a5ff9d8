//! Typed KMIP enumerations: operations, result status and reason, key state, protocol version.

use std::fmt;
use std::str::FromStr;

macro_rules! kmip_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $code:expr, $text:expr;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)*
            /// A value this client has no name for.
            Other(u32),
        }
        impl $name {
            /// The enumeration's wire value.
            pub fn code(self) -> u32 {
                match self {
                    $($name::$variant => $code,)*
                    $name::Other(c) => c,
                }
            }
            /// The enumeration named by a wire value.
            pub fn from_code(code: u32) -> Self {
                match code {
                    $($code => $name::$variant,)*
                    c => $name::Other(c),
                }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$variant => f.write_str($text),)*
                    $name::Other(c) => write!(f, "{} {c:#x}", stringify!($name)),
                }
            }
        }
    };
}

kmip_enum! {
    /// A KMIP operation (the ones of KMIP 1.0–1.4).
    Operation {
        Create = 0x01, "Create";
        CreateKeyPair = 0x02, "CreateKeyPair";
        Register = 0x03, "Register";
        ReKey = 0x04, "ReKey";
        DeriveKey = 0x05, "DeriveKey";
        Certify = 0x06, "Certify";
        ReCertify = 0x07, "ReCertify";
        Locate = 0x08, "Locate";
        Check = 0x09, "Check";
        Get = 0x0A, "Get";
        GetAttributes = 0x0B, "GetAttributes";
        GetAttributeList = 0x0C, "GetAttributeList";
        AddAttribute = 0x0D, "AddAttribute";
        ModifyAttribute = 0x0E, "ModifyAttribute";
        DeleteAttribute = 0x0F, "DeleteAttribute";
        ObtainLease = 0x10, "ObtainLease";
        GetUsageAllocation = 0x11, "GetUsageAllocation";
        Activate = 0x12, "Activate";
        Revoke = 0x13, "Revoke";
        Destroy = 0x14, "Destroy";
        Archive = 0x15, "Archive";
        Recover = 0x16, "Recover";
        Validate = 0x17, "Validate";
        Query = 0x18, "Query";
        Cancel = 0x19, "Cancel";
        Poll = 0x1A, "Poll";
        Notify = 0x1B, "Notify";
        Put = 0x1C, "Put";
        ReKeyKeyPair = 0x1D, "ReKeyKeyPair";
        DiscoverVersions = 0x1E, "DiscoverVersions";
        Encrypt = 0x1F, "Encrypt";
        Decrypt = 0x20, "Decrypt";
        Sign = 0x21, "Sign";
        SignatureVerify = 0x22, "SignatureVerify";
        Mac = 0x23, "MAC";
        MacVerify = 0x24, "MACVerify";
        RngRetrieve = 0x25, "RNGRetrieve";
        RngSeed = 0x26, "RNGSeed";
        Hash = 0x27, "Hash";
        CreateSplitKey = 0x28, "CreateSplitKey";
        JoinSplitKey = 0x29, "JoinSplitKey";
        Import = 0x2A, "Import";
        Export = 0x2B, "Export";
    }
}

impl Operation {
    /// Whether sending it twice has the same effect as once, so a request that met a dead
    /// pooled connection may be resent on a new one. Create, Register, ReKey, Activate,
    /// Revoke and Destroy are not: they always go out on a fresh connection instead.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Operation::DiscoverVersions
                | Operation::Query
                | Operation::Get
                | Operation::GetAttributes
                | Operation::GetAttributeList
                | Operation::Locate
                | Operation::Encrypt
                | Operation::Decrypt
        )
    }
}

kmip_enum! {
    /// The Result Status of a batch item.
    ResultStatus {
        Success = 0x00, "Success";
        OperationFailed = 0x01, "Operation Failed";
        OperationPending = 0x02, "Operation Pending";
        OperationUndone = 0x03, "Operation Undone";
    }
}

kmip_enum! {
    /// The Result Reason of a failed batch item (KMIP 1.4).
    ResultReason {
        ItemNotFound = 0x01, "Item Not Found";
        ResponseTooLarge = 0x02, "Response Too Large";
        AuthenticationNotSuccessful = 0x03, "Authentication Not Successful";
        InvalidMessage = 0x04, "Invalid Message";
        OperationNotSupported = 0x05, "Operation Not Supported";
        MissingData = 0x06, "Missing Data";
        InvalidField = 0x07, "Invalid Field";
        FeatureNotSupported = 0x08, "Feature Not Supported";
        OperationCanceledByRequester = 0x09, "Operation Canceled By Requester";
        CryptographicFailure = 0x0A, "Cryptographic Failure";
        IllegalOperation = 0x0B, "Illegal Operation";
        PermissionDenied = 0x0C, "Permission Denied";
        ObjectArchived = 0x0D, "Object Archived";
        IndexOutOfBounds = 0x0E, "Index Out Of Bounds";
        ApplicationNamespaceNotSupported = 0x0F, "Application Namespace Not Supported";
        KeyFormatTypeNotSupported = 0x10, "Key Format Type Not Supported";
        KeyCompressionTypeNotSupported = 0x11, "Key Compression Type Not Supported";
        EncodingOptionError = 0x12, "Encoding Option Error";
        KeyValueNotPresent = 0x13, "Key Value Not Present";
        AttestationRequired = 0x14, "Attestation Required";
        AttestationFailed = 0x15, "Attestation Failed";
        Sensitive = 0x16, "Sensitive";
        NotExtractable = 0x17, "Not Extractable";
        ObjectAlreadyExists = 0x18, "Object Already Exists";
        GeneralFailure = 0x100, "General Failure";
    }
}

kmip_enum! {
    /// The State attribute of a managed object.
    KeyState {
        PreActive = 0x01, "PreActive";
        Active = 0x02, "Active";
        Deactivated = 0x03, "Deactivated";
        Compromised = 0x04, "Compromised";
        Destroyed = 0x05, "Destroyed";
        DestroyedCompromised = 0x06, "Destroyed Compromised";
    }
}

kmip_enum! {
    /// Why a key is revoked.
    RevocationReason {
        Unspecified = 0x01, "Unspecified";
        KeyCompromise = 0x02, "Key Compromise";
        CaCompromise = 0x03, "CA Compromise";
        AffiliationChanged = 0x04, "Affiliation Changed";
        Superseded = 0x05, "Superseded";
        CessationOfOperation = 0x06, "Cessation Of Operation";
        PrivilegeWithdrawn = 0x07, "Privilege Withdrawn";
    }
}

/// A KMIP protocol version. This client speaks 1.0 to 1.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    pub major: i32,
    pub minor: i32,
}

impl ProtocolVersion {
    pub const V1_0: Self = Self::new(1, 0);
    pub const V1_1: Self = Self::new(1, 1);
    pub const V1_2: Self = Self::new(1, 2);
    pub const V1_3: Self = Self::new(1, 3);
    pub const V1_4: Self = Self::new(1, 4);

    pub const fn new(major: i32, minor: i32) -> Self {
        Self { major, minor }
    }
}

impl Default for ProtocolVersion {
    /// 1.4: the first version whose Encrypt response carries the AES-GCM tag.
    fn default() -> Self {
        Self::V1_4
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for ProtocolVersion {
    type Err = String;
    /// Accepts `1.0` … `1.4`.
    fn from_str(s: &str) -> Result<Self, String> {
        let v = s
            .trim()
            .split_once('.')
            .and_then(|(a, b)| Some(Self::new(a.parse().ok()?, b.parse().ok()?)));
        match v {
            Some(v) if v >= Self::V1_0 && v <= Self::V1_4 => Ok(v),
            _ => Err(format!(
                "KMIP version {s:?} is not supported: use one of 1.0, 1.1, 1.2, 1.3, 1.4"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_names() {
        assert_eq!(Operation::from_code(0x1F), Operation::Encrypt);
        assert_eq!(Operation::Encrypt.code(), 0x1F);
        assert_eq!(Operation::from_code(0x99), Operation::Other(0x99));
        assert_eq!(Operation::Other(0x99).to_string(), "Operation 0x99");
        assert_eq!(
            ResultReason::from_code(0x100).to_string(),
            "General Failure"
        );
        assert_eq!(KeyState::from_code(2), KeyState::Active);
    }

    #[test]
    fn parses_versions() {
        assert_eq!("1.2".parse::<ProtocolVersion>(), Ok(ProtocolVersion::V1_2));
        assert_eq!(
            " 1.4 ".parse::<ProtocolVersion>(),
            Ok(ProtocolVersion::V1_4)
        );
        assert!(
            "2.0"
                .parse::<ProtocolVersion>()
                .unwrap_err()
                .contains("1.4")
        );
        assert!("x".parse::<ProtocolVersion>().is_err());
        assert!(ProtocolVersion::V1_0 < ProtocolVersion::V1_4);
    }
}
