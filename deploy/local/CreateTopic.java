// Creates a topic (replication factor 1) with Apache Kafka's Admin client, for the local
// stack: `java -cp 'KAFKA_LIBS/*' deploy/local/CreateTopic.java BOOTSTRAP TOPIC PARTITIONS`.
// A topic that already exists is left as it is.
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;

public class CreateTopic {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        try (Admin admin = Admin.create(props)) {
            NewTopic topic = new NewTopic(args[1], Integer.parseInt(args[2]), (short) 1);
            admin.createTopics(List.of(topic)).all().get();
        } catch (ExecutionException e) {
            if (!(e.getCause() instanceof TopicExistsException)) {
                throw e;
            }
        }
    }
}
