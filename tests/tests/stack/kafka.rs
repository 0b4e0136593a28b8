use integration::{unique, Stack};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

#[tokio::test]
async fn produce_with_acks_all_and_consume_back() {
    let stack = Stack::from_env();
    let topic = unique("it-kafka");

    stack.create_topic(&topic, 2).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let payload = format!("hello from {topic}");
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key("k1")
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "logpipe-schema",
                    value: Some("1"),
                })),
            Duration::from_secs(30),
        )
        .await
        .expect("delivery acknowledged by the broker");
    let (partition, offset) = (delivery.partition, delivery.offset);
    assert!(offset >= 0);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .set("group.id", unique("it-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("a message within 60 s")
        .expect("consume");
    assert_eq!(msg.payload_view::<str>(), Some(Ok(payload.as_str())));
    assert_eq!(msg.key(), Some(&b"k1"[..]));
    assert_eq!((msg.partition(), msg.offset()), (partition, offset));
    let header = msg.headers().expect("headers").get(0);
    assert_eq!(header.key, "logpipe-schema");
    assert_eq!(header.value, Some(&b"1"[..]));
}
