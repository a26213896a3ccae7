// loopback-probe.c: the least CPU a request of N bytes can cost over loopback TCP (no HTTP, no
// parsing): a client thread writes N-byte bodies, a server thread reads each into one buffer and
// answers 64 bytes, closed loop on one connection; prints CPU ms per query of both ends.
// Build: gcc -O2 -pthread -o /tmp/loopback-probe scripts/probes/loopback-probe.c
// Run:   /tmp/loopback-probe BYTES QUERIES   (e.g. 940000 5000)
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static size_t N; static int Q; static int lfd; static int port;
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void *server(void*a){
  int fd=accept(lfd,0,0); int one=1; setsockopt(fd,IPPROTO_TCP,TCP_NODELAY,&one,4);
  char*buf=malloc(N); char rep[64]={0};
  for(int q=0;q<Q;q++){ size_t got=0; while(got<N){ssize_t r=read(fd,buf+got,N-got); if(r<=0)exit(1); got+=r;} write(fd,rep,64);}
  return 0;}
int main(int c,char**v){
  N=atol(v[1]); Q=atoi(v[2]);
  lfd=socket(AF_INET,SOCK_STREAM,0); struct sockaddr_in sa={.sin_family=AF_INET,.sin_addr.s_addr=htonl(0x7f000001)};
  bind(lfd,(void*)&sa,sizeof sa); socklen_t l=sizeof sa; getsockname(lfd,(void*)&sa,&l); listen(lfd,1);
  pthread_t t; pthread_create(&t,0,server,0);
  int fd=socket(AF_INET,SOCK_STREAM,0); connect(fd,(void*)&sa,sizeof sa); int one=1; setsockopt(fd,IPPROTO_TCP,TCP_NODELAY,&one,4);
  char*body=malloc(N); memset(body,7,N); char rep[64];
  struct rusage r0,r1; getrusage(RUSAGE_SELF,&r0); double t0=now();
  for(int q=0;q<Q;q++){ size_t s=0; while(s<N){ssize_t w=write(fd,body+s,N-s); if(w<=0)return 1; s+=w;} size_t g=0; while(g<64){ssize_t r=read(fd,rep+g,64-g); if(r<=0)return 1; g+=r;} }
  double wall=now()-t0; getrusage(RUSAGE_SELF,&r1); pthread_join(t,0);
  double cpu=(r1.ru_utime.tv_sec-r0.ru_utime.tv_sec)+(r1.ru_utime.tv_usec-r0.ru_utime.tv_usec)*1e-6+(r1.ru_stime.tv_sec-r0.ru_stime.tv_sec)+(r1.ru_stime.tv_usec-r0.ru_stime.tv_usec)*1e-6;
  printf("body %zu B: %.3f ms wall/query, %.3f ms CPU/query (user+sys, both ends)\n",N,wall*1e3/Q,cpu*1e3/Q);
}
