//! What a failed librdkafka call means: whether to try again, and what to tell the user.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub fn code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// Whether the brokers may answer if asked again (down, moving, slow).
pub fn is_retriable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_retriable(),
        _ => matches!(
            code(e),
            Some(
                RDKafkaErrorCode::OperationTimedOut
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::NetworkException
                    | RDKafkaErrorCode::CoordinatorNotAvailable
                    | RDKafkaErrorCode::NotCoordinator
                    | RDKafkaErrorCode::CoordinatorLoadInProgress
                    | RDKafkaErrorCode::LeaderNotAvailable
                    | RDKafkaErrorCode::Resolve
            )
        ),
    }
}

/// The error as a user can act on it.
pub fn explain(e: &KafkaError) -> String {
    let hint = match code(e) {
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
            "; check username and the password (sasl_mechanism, password_env/password_file)"
        }
        Some(RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::TransactionalIdAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed) => {
            "; the user lacks an ACL for the topics or the transactional id"
        }
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch) => {
            "; another writer took over the same transactional_id (two connectors or sinks with one id?)"
        }
        _ => "",
    };
    format!("{e}{hint}")
}
