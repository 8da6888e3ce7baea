// A transactional producer (Apache Kafka's Java client) through a topic Tollgate refuses:
// the transaction that touched the refused topic must abort cleanly, and the producer must
// go on to commit the next one. Default client settings; the client id is Java's default for
// a transactional producer ("producer-" + transactional.id).
//
// Usage: TxnThroughRefusal <bootstrap> <allowed topic> <refused topic> <records per transaction>
// Prints ABORTED <exception> then COMMITTED, or FATAL <exception> and exits 1.

import java.util.Properties;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.errors.AuthorizationException;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.serialization.StringSerializer;

public class TxnThroughRefusal {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], allowed = args[1], refused = args[2];
        int n = Integer.parseInt(args[3]);
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "tx-refusal");
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "30000");
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            producer.initTransactions();
            producer.beginTransaction();
            for (int i = 0; i < n; i++) {
                producer.send(new ProducerRecord<>(allowed, "aborted-" + i, "v"));
            }
            Future<RecordMetadata> bad = producer.send(new ProducerRecord<>(refused, "x", "v"));
            try {
                bad.get();
                producer.commitTransaction();
                System.out.println("FATAL the refused topic was written");
                System.exit(1);
            } catch (Exception e) {
                Throwable cause = e.getCause() != null ? e.getCause() : e;
                System.out.println("SEND " + e);
                if (cause instanceof ProducerFencedException) {
                    System.out.println("FATAL " + cause);
                    System.exit(1);
                }
                producer.abortTransaction();
                System.out.println("ABORTED " + cause.getClass().getSimpleName()
                    + " authorization=" + (cause instanceof AuthorizationException));
            }
            producer.beginTransaction();
            for (int i = 0; i < n; i++) {
                producer.send(new ProducerRecord<>(allowed, "committed-" + i, "v"));
            }
            producer.commitTransaction();
            System.out.println("COMMITTED");
        } catch (KafkaException e) {
            System.out.println("FATAL " + e + " cause " + e.getCause());
            System.exit(1);
        }
    }
}
