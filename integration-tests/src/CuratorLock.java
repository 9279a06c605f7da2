import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.concurrent.TimeUnit;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.RetryNTimes;

public class CuratorLock {
    public static void main(String[] args) throws Exception {
        String hosts = args[0], path = args[1], mode = args[2];
        int sessionMs = Integer.parseInt(args[3]);
        CuratorFramework client = CuratorFrameworkFactory.builder()
            .connectString(hosts).sessionTimeoutMs(sessionMs).connectionTimeoutMs(15000)
            .retryPolicy(new RetryNTimes(3, 100)).build();
        client.start();
        if (!client.blockUntilConnected(30, TimeUnit.SECONDS)) throw new RuntimeException("no connection");
        InterProcessMutex mutex = new InterProcessMutex(client, path);
        if (mode.equals("try")) {
            boolean got = mutex.acquire(0, TimeUnit.MILLISECONDS);
            System.out.println(got ? "acquired" : "busy");
            System.out.flush();
            if (got) mutex.release();
        } else if (mode.equals("count")) {
            // args[4] is the identifier slot (unused: Curator writes the client's address).
            Path counter = Paths.get(args[5]);
            int rounds = Integer.parseInt(args[6]);
            for (int i = 0; i < rounds; i++) {
                mutex.acquire();
                try {
                    String text = new String(Files.readAllBytes(counter)).trim();
                    int value = text.isEmpty() ? 0 : Integer.parseInt(text);
                    Thread.sleep(10);
                    Files.write(counter, String.valueOf(value + 1).getBytes());
                } finally {
                    mutex.release();
                }
            }
            System.out.println("counted");
            System.out.flush();
        } else {
            System.out.println("started");
            System.out.flush();
            if (!mutex.acquire(120, TimeUnit.SECONDS)) throw new RuntimeException("not acquired in 120 s");
            System.out.println("held");
            System.out.flush();
            new BufferedReader(new InputStreamReader(System.in)).readLine();
            mutex.release();
            System.out.println("released");
            System.out.flush();
        }
        client.close();
    }
}
