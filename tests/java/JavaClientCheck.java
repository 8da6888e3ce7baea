// Apache Kafka's own Java client (kafka-clients 3.9.1) through Tollgate: produce with the
// idempotent producer, then consume in a consumer group (classic protocol, incremental fetch
// sessions) with synchronous commits. Prints every consumed record as one tab-separated line:
//   REC partition offset key value headers timestamp
// and "COMMITTED partition offset" for each committed position. Exit code 0 on success.
// Used by tests/java_client.rs; args: bootstrap topic count group
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.*;

public class JavaClientCheck {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1], group = args[3];
        int count = Integer.parseInt(args[2]);
        // Optional 5th argument: "produce", "consume" or "both" (the default).
        String mode = args.length > 4 ? args[4] : "both";
        if (!mode.equals("consume")) produce(bootstrap, topic, count);
        if (!mode.equals("produce")) System.exit(consume(bootstrap, topic, count, group));
    }

    /** Client properties from $KAFKA_CLIENT_PROPS, "k=v;k=v" (TLS settings, say). */
    static void extra(Properties p) {
        String props = System.getenv("KAFKA_CLIENT_PROPS");
        if (props == null) return;
        for (String kv : props.split(";")) {
            int eq = kv.indexOf('=');
            if (eq > 0) p.put(kv.substring(0, eq), kv.substring(eq + 1));
        }
    }

    static void produce(String bootstrap, String topic, int count) throws Exception {

        Properties pp = new Properties();
        pp.put("bootstrap.servers", bootstrap);
        pp.put("acks", "all");
        pp.put("enable.idempotence", "true");
        pp.put("linger.ms", "5");
        pp.put("client.id", "java-producer");
        extra(pp);
        try (KafkaProducer<String, String> p = new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer())) {
            List<java.util.concurrent.Future<RecordMetadata>> acks = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                RecordHeaders h = new RecordHeaders();
                h.add("seq", Integer.toString(i).getBytes(StandardCharsets.UTF_8));
                h.add("client", "java".getBytes(StandardCharsets.UTF_8));
                acks.add(p.send(new ProducerRecord<>(topic, null, 1_700_000_000_000L + i, "jk-" + i, "jv-" + i, h)));
            }
            for (java.util.concurrent.Future<RecordMetadata> f : acks) f.get();
        }
    }

    static int consume(String bootstrap, String topic, int count, String group) throws Exception {
        Properties cp = new Properties();
        cp.put("bootstrap.servers", bootstrap);
        cp.put("group.id", group);
        cp.put("client.id", "java-consumer");
        extra(cp);
        cp.put("auto.offset.reset", "earliest");
        cp.put("enable.auto.commit", "false");
        if (!"consumer".equalsIgnoreCase(cp.getProperty("group.protocol", "classic"))) {
            // KIP-848 groups take these from the broker; the client may not set them.
            cp.put("session.timeout.ms", "6000");
            cp.put("heartbeat.interval.ms", "500");
        }
        cp.put("max.poll.records", "50"); // many polls: exercises incremental fetch sessions
        int seen = 0;
        long deadline = System.currentTimeMillis() + 60_000;
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
            c.subscribe(Collections.singletonList(topic));
            while (seen < count && System.currentTimeMillis() < deadline) {
                ConsumerRecords<String, String> recs = c.poll(Duration.ofMillis(200));
                for (ConsumerRecord<String, String> r : recs) {
                    StringBuilder hs = new StringBuilder();
                    for (Header h : r.headers()) {
                        hs.append(h.key()).append('=').append(new String(h.value(), StandardCharsets.UTF_8)).append(';');
                    }
                    System.out.println("REC\t" + r.partition() + "\t" + r.offset() + "\t" + r.key() + "\t" + r.value()
                        + "\t" + hs + "\t" + r.timestamp());
                    seen++;
                }
                if (!recs.isEmpty()) c.commitSync();
            }
            for (TopicPartition tp : c.assignment()) {
                OffsetAndMetadata om = c.committed(Collections.singleton(tp)).get(tp);
                System.out.println("COMMITTED\t" + tp.partition() + "\t" + (om == null ? -1 : om.offset()));
            }
        }
        return seen == count ? 0 : 3;
    }
}
