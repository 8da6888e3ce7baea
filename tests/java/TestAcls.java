// Creates ACL bindings on a test broker with Apache Kafka's Admin client (rust-rdkafka has no
// ACL calls). Run in source-file mode against the broker's own jars:
//   java -cp 'KAFKA_LIBS/*' tests/java/TestAcls.java BOOTSTRAP BINDING...
// where each BINDING is PRINCIPAL:RESOURCE_TYPE:NAME:OPERATION, e.g.
// User:billing:TOPIC:orders:READ (ALLOW, any host, literal pattern). Exits non-zero on error.
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class TestAcls {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        List<AclBinding> bindings = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            // The principal itself has one colon (User:name).
            String[] p = args[i].split(":");
            String principal = p[0] + ":" + p[1];
            ResourcePattern resource =
                new ResourcePattern(ResourceType.valueOf(p[2]), p[3], PatternType.LITERAL);
            AccessControlEntry entry = new AccessControlEntry(
                principal, "*", AclOperation.valueOf(p[4]), AclPermissionType.ALLOW);
            bindings.add(new AclBinding(resource, entry));
        }
        try (Admin admin = Admin.create(props)) {
            admin.createAcls(bindings).all().get();
        }
    }
}
