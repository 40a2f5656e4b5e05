//! One classification of failures, and its one mapping to gRPC codes and HTTP statuses:
//! every service answers an error through [`Failure`], and every retry decision asks
//! [`Failure::is_retryable`].

/// What a failure means for whoever meets it: whose fault it is and whether trying again
/// can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The caller's request or input breaks a rule (a bad spec, value, record or file):
    /// fix it and send it again.
    Invalid,
    /// What the request names does not exist (a job, model, version or location).
    NotFound,
    /// The request is well formed, but the state of what it names refuses it (resuming a
    /// job that succeeded, a client of another protocol version).
    Refused,
    /// Passing: the coordinator is unreachable, leadership moved, a compare-and-swap
    /// lost, a peer stopped answering, no replica is free. Trying again can succeed.
    Unavailable,
    /// The request is larger than the server takes.
    TooLarge,
    /// No credential came with the request, or one the cluster does not accept (unknown,
    /// expired, revoked).
    Unauthenticated,
    /// A known credential without the right to do this.
    Forbidden,
    /// A bug, a broken artifact, or a fault of the environment that trying again here
    /// will not fix (the object store's client has already retried): the details go to
    /// the log, the caller gets a pointer to it.
    Internal,
}

impl Failure {
    /// Whether trying the same thing again can succeed.
    pub fn is_retryable(self) -> bool {
        self == Failure::Unavailable
    }

    /// The gRPC code.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Failure::Invalid => tonic::Code::InvalidArgument,
            Failure::NotFound => tonic::Code::NotFound,
            Failure::Refused => tonic::Code::FailedPrecondition,
            Failure::Unavailable => tonic::Code::Unavailable,
            Failure::TooLarge => tonic::Code::ResourceExhausted,
            Failure::Unauthenticated => tonic::Code::Unauthenticated,
            Failure::Forbidden => tonic::Code::PermissionDenied,
            Failure::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status code.
    pub fn http_status(self) -> u16 {
        match self {
            Failure::Invalid => 400,
            Failure::NotFound => 404,
            Failure::Refused => 409,
            Failure::Unavailable => 503,
            Failure::TooLarge => 413,
            Failure::Unauthenticated => 401,
            Failure::Forbidden => 403,
            Failure::Internal => 500,
        }
    }

    /// The failure an HTTP status stands for (a forwarded reply's).
    pub fn from_http_status(status: u16) -> Failure {
        match status {
            401 => Failure::Unauthenticated,
            403 => Failure::Forbidden,
            404 => Failure::NotFound,
            409 => Failure::Refused,
            413 => Failure::TooLarge,
            503 => Failure::Unavailable,
            400..=499 => Failure::Invalid,
            _ => Failure::Internal,
        }
    }

    /// The failure a gRPC status code stands for.
    pub fn from_grpc_code(code: tonic::Code) -> Failure {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Failure::Invalid,
            tonic::Code::NotFound => Failure::NotFound,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists | tonic::Code::Aborted => {
                Failure::Refused
            }
            tonic::Code::Unavailable => Failure::Unavailable,
            tonic::Code::ResourceExhausted => Failure::TooLarge,
            tonic::Code::Unauthenticated => Failure::Unauthenticated,
            tonic::Code::PermissionDenied => Failure::Forbidden,
            _ => Failure::Internal,
        }
    }

    /// A gRPC status with this failure's code and `message`.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Failure; 8] = [
        Failure::Invalid,
        Failure::NotFound,
        Failure::Refused,
        Failure::Unavailable,
        Failure::TooLarge,
        Failure::Unauthenticated,
        Failure::Forbidden,
        Failure::Internal,
    ];

    #[test]
    fn each_failure_has_its_own_codes_and_survives_the_http_round_trip() {
        for (i, a) in ALL.iter().enumerate() {
            assert_eq!(Failure::from_http_status(a.http_status()), *a);
            for b in &ALL[i + 1..] {
                assert_ne!(a.grpc_code(), b.grpc_code());
                assert_ne!(a.http_status(), b.http_status());
            }
        }
        assert_eq!(Failure::from_http_status(422), Failure::Invalid);
        assert_eq!(Failure::from_http_status(502), Failure::Internal);
    }

    #[test]
    fn only_passing_failures_are_retried() {
        let retried: Vec<_> = ALL.iter().filter(|f| f.is_retryable()).collect();
        assert_eq!(retried, [&Failure::Unavailable]);
    }
}
